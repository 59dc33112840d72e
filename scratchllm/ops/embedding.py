"""Embedding lookup: ``out[b, t] = table[idx[b, t]]``."""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import get_xp, index_sum
from ..threads import parallel_chunks
from ._checks import check_dout, check_float, check_int


# From this many output elements the rows are gathered on every CPU thread. Measured on the CI machine (C = 768,
# V = 50257, one thread against two): 1024 rows 274 -> 383 us (the hand-off costs more), 4096 rows 1033 -> 774 us,
# 16384 rows 5.2 -> 3.1 ms
GATHER_PARALLEL_MIN = 1 << 21


def embedding_forward(idx, table):
    """Look up one row of ``table`` per token id.

    Shapes:
        idx int (B, T) (any shape works), table (V, C)  ->  out (B, T, C)

    Math:
        out[b, t, :] = table[idx[b, t], :]
    Ids outside [0, V) raise ValueError on NumPy. On CuPy the check would read values back to the host (a
    sync in every training step), so it is skipped there: validate ids on the host (GPT.forward does, for
    ids it is given as NumPy arrays) before they go to the device.
    """
    check_int("idx", idx)
    check_float("table", table, ndim=2)
    V = table.shape[0]
    if idx.size and get_xp(idx) is np:  # ids on the host: checking is free
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= V:
            bad = lo if lo < 0 else hi
            raise ValueError(f"idx holds token id {bad}, outside [0, {V}) for a table of shape {table.shape}")
    if get_xp(idx) is np and get_xp(table) is np and idx.size * table.shape[1] >= GATHER_PARALLEL_MIN:
        ids = idx.reshape(-1)  # (N,) the rows are gathered in pieces on every CPU thread (ids checked above)
        out = np.empty((ids.size, table.shape[1]), dtype=table.dtype)  # (N, C)
        parallel_chunks(lambda r: np.take(table, ids[r], axis=0, out=out[r], mode="clip"), ids.size, out.size, np)
        out = out.reshape(idx.shape + (table.shape[1],))  # (B, T, C)
    else:
        out = table[idx]  # (B, T, C)
    cache = (idx, table.shape, table.dtype)
    return out, cache


def embedding_backward(dout, cache):
    """Gradient of ``embedding_forward`` with respect to the table (token ids get ``None``).

    Shapes:
        dout (B, T, C)  ->  (None, dtable (V, C))

    Math:
        dtable[v, :] = sum over (b, t) with idx[b, t] == v of dout[b, t, :]
        A token id that appears several times ACCUMULATES its rows (scatter-add, not assignment).
    """
    idx, table_shape, dtype = cache
    V, C = table_shape
    check_dout(dout, idx.shape + (C,))
    if kernels.cpu_kernel_for(dout) and dout.dtype == dtype:  # one loop over the tokens (kernels/cpu/embedding.py)
        from ..kernels.cpu import embedding as fused
        return fused.embedding_backward(dout, cache)
    dtable = index_sum(idx.reshape(-1), dout.reshape(-1, C).astype(dtype, copy=False), V)  # (V, C) scatter-add
    return None, dtable
