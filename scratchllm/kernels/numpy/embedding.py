"""Embedding in NumPy: the gather in pieces on every CPU thread, the backward's zeroed table written by every
core and each id's rows summed once (``backend.index_sum``). Reference: ``scratchllm/ops/embedding.py``."""

from __future__ import annotations

import numpy as np

from ...backend import index_sum
from ...threads import parallel_chunks

# From this many output elements the rows are gathered on every CPU thread. Measured on the CI machine (C = 768,
# V = 50257, one thread against two): 1024 rows 274 -> 383 us (the hand-off costs more), 4096 rows 1033 -> 774 us,
# 16384 rows 5.2 -> 3.1 ms
GATHER_PARALLEL_MIN = 1 << 21


def embedding_forward(idx, table):
    """``ops.embedding_forward`` on NumPy arrays (ids checked by the dispatch): ``out, (idx, shape, dtype)``."""
    if idx.size * table.shape[1] < GATHER_PARALLEL_MIN:
        return table[idx], (idx, table.shape, table.dtype)  # (B, T, C): one thread is faster
    ids = idx.reshape(-1)  # (N,) the rows are gathered in pieces on every CPU thread
    out = np.empty((ids.size, table.shape[1]), dtype=table.dtype)  # (N, C)
    parallel_chunks(lambda r: np.take(table, ids[r], axis=0, out=out[r], mode="clip"), ids.size, out.size, np)
    return out.reshape(idx.shape + (table.shape[1],)), (idx, table.shape, table.dtype)  # (B, T, C)


def embedding_backward(dout, cache):
    """``ops.embedding_backward`` on NumPy arrays (checked by the dispatch): ``(None, dtable)``."""
    idx, (V, C), dtype = cache
    return None, index_sum(idx.reshape(-1), dout.reshape(-1, C).astype(dtype, copy=False), V)  # (V, C)
