"""Embedding lookup: ``out[b, t] = table[idx[b, t]]``.

The textbook: the forward and backward as their Math reads. Faster ways to compute the same numbers (the
gather in pieces on every thread, a zeroed table written by every core, a Numba scatter-add) are registered
implementations in ``scratchllm/kernels/``; the model runs them through ``scratchllm.kernels.dispatch``.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_xp, scatter_add
from ._checks import check_dout, check_float, check_int


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
    check_inputs(idx, table)
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
    idx, (V, C), dtype = cache
    check_dout(dout, idx.shape + (C,))
    dtable = get_xp(dout).zeros((V, C), dtype=dtype)  # (V, C)
    rows = dout.reshape(-1, C).astype(dtype, copy=False)  # (N, C) one row per token
    scatter_add(dtable, idx.reshape(-1), rows)  # accumulates repeated ids (NumPy's dtable[idx] += rows would not)
    return None, dtable


def check_inputs(idx, table):
    """idx an integer array, table (V, C) float, and on NumPy every id in [0, V): else an error naming it."""
    check_int("idx", idx)
    check_float("table", table, ndim=2)
    V = table.shape[0]
    if idx.size and get_xp(idx) is np:  # ids on the host: checking is free
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= V:
            bad = lo if lo < 0 else hi
            raise ValueError(f"idx holds token id {bad}, outside [0, {V}) for a table of shape {table.shape}")
