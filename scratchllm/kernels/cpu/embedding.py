"""The embedding backward (a scatter-add of rows) as a Numba CPU kernel. Reference:
``scratchllm/ops/embedding.py`` (a scatter-add into zeros; ``kernels/numpy/embedding.py`` sorts the ids and
sums runs of rows).

One loop over the tokens adds each row of dout into its id's row of the zeroed table, in token order, so
every id's rows are summed in their original order, as the reference sums them. The columns are dealt out to
the CPU threads (each thread adds its own columns of every row: no two threads write one address), so the
numbers do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np

from .. import threads as threads_module
from ..threads import cpu_threads, parallel_map, shard_bounds
from ..numpy.embedding import zeros_on_every_core
from . import jit


@jit()
def _scatter_rows(ids, values, table, c0, c1):
    """table[ids[j], c0:c1] += values[j, c0:c1] for j = 0, 1, ... in order."""
    for j in range(ids.shape[0]):
        row = ids[j]
        for c in range(c0, c1):
            table[row, c] += values[j, c]


def embedding_backward(dout, cache):
    """``ops.embedding_backward`` on NumPy arrays (dout checked by the dispatch): ``(None, dtable)``."""
    idx, (V, C), dtype = cache
    ids = np.ascontiguousarray(idx.reshape(-1), dtype=np.int64)  # (N,)
    if ids.size and (ids.min() < 0 or ids.max() >= V):  # the kernel does not check its writes: we do
        raise ValueError(f"the cache's token ids must lie in [0, {V}); got {ids.min()} .. {ids.max()}")
    values = np.ascontiguousarray(dout.reshape(-1, C).astype(dtype, copy=False))  # (N, C)
    table = zeros_on_every_core((V, C), dtype)  # (V, C)
    threads = cpu_threads() if values.size >= threads_module.KERNEL_PARALLEL_MIN else 1
    parallel_map(lambda cols: _scatter_rows(ids, values, table, cols.start, cols.stop), shard_bounds(C, threads))
    return None, table
