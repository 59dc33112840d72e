"""Embedding in NumPy: the gather in pieces on every CPU thread, the backward's zeroed table written by every
core and each id's rows summed once (``index_sum``). Reference: ``scratchllm/ops/embedding.py``."""

from __future__ import annotations

import ctypes

import numpy as np

from ...backend import _run_sums
from ..threads import PARALLEL_MIN, cpu_threads, parallel_chunks, parallel_map, shard_bounds

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


def index_sum(indices, values, n):
    """A new (n, ...) array whose row i is the sum of the ``values`` rows j with ``indices[j] == i`` (zero
    where i never occurs): ``backend.scatter_add`` into zeros, but each row is written once, by assignment."""
    out = zeros_on_every_core((n,) + tuple(values.shape[1:]), values.dtype)
    for rows, sums in _run_sums(np.asarray(indices).reshape(-1), values):
        out[rows] = sums
    return out


def zeros_on_every_core(shape, dtype):
    """``np.zeros``, written by every CPU thread at once when large (an embedding gradient: GPT-2's is
    154 MB). The threads' memory is reused, not fresh from the OS (see ``tune_host_allocator``), so it must be
    written. By the C library's ``memset`` (through ctypes, which lets go of the GIL): it writes whole cache
    lines without reading them first, where NumPy's ``fill`` reads each line before writing it. 154 MB on
    the CI machine's 2 cores: 7.4 ms with ``fill``, 4.5 ms with ``memset`` (one core: 17.4 and 10.3 ms)."""
    out = np.empty(shape, dtype=dtype)
    flat = out.reshape(-1)
    if flat.size < 16 * PARALLEL_MIN:
        flat.fill(0)
    else:  # all-zero bytes are 0.0 in every float format NumPy has
        parallel_map(lambda part: ctypes.memset(flat[part].ctypes.data, 0, flat[part].nbytes),
                     shard_bounds(flat.size, cpu_threads()))
    return out
