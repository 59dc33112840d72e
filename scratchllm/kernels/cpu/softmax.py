"""Softmax along the last axis, and attention's scaled (causal) softmax, as Numba CPU kernels.

References: ``softmax_rows`` and ``softmax_rows_backward`` in ``scratchllm/ops/softmax.py`` (the softmax op
and attention call them on pieces of their arrays) and the scale-mask-softmax of ``attention_weights`` in
``scratchllm/ops/attention.py``:

    att *= scale;  att += -inf above the causal diagonal;  p = softmax(att, axis=-1)

The forward reads a row once for its max, once to write exp(x - max) and add it up, and once more to
scale by 1 / sum: three sweeps instead of the op's five NumPy passes (seven in attention, with the scale
and the mask). Masked entries are written as exact zeros and never read, so the mask is never built.
The backward is one sweep for sum(dout * y) and one to write dx.
"""

from __future__ import annotations

import numpy as np

from . import ONE, REDUCE, ZERO, jit
from ._math import LANES, exp, row_max


@jit(fastmath=REDUCE)
def _softmax_row(x, y, scale, visible, lanes):
    """y[:visible] = softmax(x[:visible] * scale), y[visible:] = 0, for one row (y may be x)."""
    top = row_max(x, visible, lanes) * scale  # scale > 0: max(x * scale) = max(x) * scale
    if x.ctypes.data != y.ctypes.data:  # from here on the row is worked in y alone: LLVM vectorizes a loop
        y[:visible] = x[:visible]  # over one array, not one over two that it cannot prove apart (in place)
    total = ZERO
    for j in range(visible):
        e = exp(y[j] * scale - top)
        y[j] = e
        total += e
    inv = ONE / total
    for j in range(visible):
        y[j] *= inv
    for j in range(visible, y.shape[0]):
        y[j] = ZERO


@jit(fastmath=REDUCE)
def softmax_rows(x, y, scale):
    """y = softmax(x * scale) along the last axis of (n, C) rows (y may be x)."""
    lanes = np.empty(LANES, x.dtype)  # row_max's scratch
    for i in range(x.shape[0]):
        _softmax_row(x[i], y[i], scale, x.shape[1], lanes)


@jit(fastmath=REDUCE)
def scaled_causal_softmax_rows(att, p, scale, causal):
    """p = softmax(att * scale, masked) for (n, Tq, Tk) scores (p may be att). Causal: query i is position
    i + Tk - Tq and sees keys j <= i + Tk - Tq; the rest of its row is 0."""
    n, Tq, Tk = att.shape
    lanes = np.empty(LANES, att.dtype)  # row_max's scratch
    for m in range(n):
        for i in range(Tq):
            visible = min(i + Tk - Tq + 1, Tk) if causal else Tk
            _softmax_row(att[m, i], p[m, i], scale, visible, lanes)


@jit(fastmath=REDUCE)
def softmax_rows_backward(dout, y, dx, scale):
    """dx = scale * y * (dout - sum(dout * y)) along the last axis of (n, C) rows (dx may be dout)."""
    n, C = y.shape
    for i in range(n):
        if dout.ctypes.data != dx.ctypes.data:  # work in dx alone, as the forward does in y
            dx[i] = dout[i]
        total = ZERO
        for j in range(C):
            total += dx[i, j] * y[i, j]
        for j in range(C):
            dx[i, j] = scale * y[i, j] * (dx[i, j] - total)


def rows_of(a):
    """``a`` (..., C) as a (n, C) view without copying, or None when its layout does not allow one (the
    caller then runs the NumPy code)."""
    if a.ndim == 0 or not a.flags.c_contiguous:
        return None
    return a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a

