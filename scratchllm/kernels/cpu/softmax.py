"""Softmax along the last axis, and attention's scaled (causal) softmax, as Numba CPU kernels.

References: ``softmax_rows`` and ``softmax_rows_backward`` in ``scratchllm/ops/softmax.py`` (the softmax op
and attention call them on pieces of their arrays), the scale-mask-softmax of ``attention_weights`` in
``scratchllm/ops/attention.py``, and the cross-entropy's ``_logsumexp_rows`` and ``_weighted_softmax_rows``:

    att *= scale;  att = -inf above the causal diagonal;  p = softmax(att, axis=-1)

The forward reads a row once for its max, once to write exp(x - max) and add it up, and once more to
scale by 1 / sum: three sweeps instead of the op's five NumPy passes (seven in attention, with the scale
and the mask). Masked entries are written as exact zeros and never read, so the mask is never built.
The backward is one sweep for sum(dout * y) and one to write dx.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from . import ONE, REDUCE, ZERO, jit
from ._math import exp, row_max


@jit(fastmath=REDUCE)
def _softmax_row(x, y, i, scale, visible, in_place):
    """y[i, :visible] = softmax(x[i, :visible] * scale), y[i, visible:] = 0, for rows x, y (n, C); in_place:
    y is x. (Rows are indexed, not sliced: a row view per row costs a third of the time at C = 1024.)"""
    top = row_max(x, i, visible) * scale  # scale > 0: max(x * scale) = max(x) * scale
    total = ZERO
    if in_place:  # y is x: one array. (A loop over two arrays that overlap fails LLVM's runtime overlap
        for j in range(visible):  # check and runs its scalar version, 4x slower.)
            e = exp(y[i, j] * scale - top)
            y[i, j] = e
            total += e
    else:  # two arrays apart: the vector version (35% faster than copying x to y and working in y alone)
        for j in range(visible):
            e = exp(x[i, j] * scale - top)
            y[i, j] = e
            total += e
    inv = ONE / total
    for j in range(visible):
        y[i, j] *= inv
    for j in range(visible, y.shape[1]):
        y[i, j] = ZERO


@jit(fastmath=REDUCE)
def softmax_rows(x, y, scale):
    """y = softmax(x * scale) along the last axis of (n, C) rows (y may be x)."""
    in_place = x.ctypes.data == y.ctypes.data
    for i in range(x.shape[0]):
        _softmax_row(x, y, i, scale, x.shape[1], in_place)


@jit(fastmath=REDUCE)
def scaled_causal_softmax_rows(att, p, scale, causal):
    """p = softmax(att * scale, masked) for C-contiguous (n, Tq, Tk) scores (p may be att). Causal: query i
    is position i + Tk - Tq and sees keys j <= i + Tk - Tq; the rest of its row is 0."""
    n, Tq, Tk = att.shape
    att2, p2 = att.reshape(n * Tq, Tk), p.reshape(n * Tq, Tk)  # (n Tq, Tk) rows, views
    in_place = att.ctypes.data == p.ctypes.data
    for r in range(n * Tq):
        visible = min(r % Tq + Tk - Tq + 1, Tk) if causal else Tk
        _softmax_row(att2, p2, r, scale, visible, in_place)


@jit(fastmath=REDUCE)
def softmax_rows_backward(dout, y, dx, scale):
    """dx = scale * y * (dout - sum(dout * y)) along the last axis of (n, C) rows (dx may be dout)."""
    n, C = y.shape
    in_place = dout.ctypes.data == dx.ctypes.data
    for i in range(n):
        total = ZERO
        for j in range(C):
            total += dout[i, j] * y[i, j]
        if in_place:  # dx is dout (see the forward on overlapping arrays)
            for j in range(C):
                dx[i, j] = scale * y[i, j] * (dx[i, j] - total)
        else:
            for j in range(C):
                dx[i, j] = scale * y[i, j] * (dout[i, j] - total)


@jit(fastmath=REDUCE)
def logsumexp_rows(x, lse):
    """lse = max + log(sum(exp(x - max))) along the last axis of (n, V) rows, into lse (n,): the cross-entropy
    forward's ``_logsumexp_rows`` in two sweeps of the row and no (n, V) temporary."""
    n, V = x.shape
    for i in range(n):
        top = row_max(x, i, V)
        total = ZERO
        for j in range(V):
            total += exp(x[i, j] - top)
        lse[i] = top + np.log(total)


@jit(fastmath=REDUCE)
def weighted_softmax_rows(x, lse, w, dx):
    """dx = w * exp(x - lse) for (n, V) rows, lse and w (n,): the cross-entropy backward's softmax, one sweep."""
    n, V = x.shape
    for i in range(n):
        for j in range(V):
            dx[i, j] = exp(x[i, j] - lse[i]) * w[i]


# The same row kernels over pieces of ``rows`` rows on every core (``kernels.cpu.run_rows``)
@jit(fastmath=REDUCE, parallel=True)
def softmax_rows_par(x, y, scale, rows):
    for k in prange((x.shape[0] + rows - 1) // rows):
        r = slice(k * rows, min((k + 1) * rows, x.shape[0]))
        softmax_rows(x[r], y[r], scale)


@jit(fastmath=REDUCE, parallel=True)
def softmax_rows_backward_par(dout, y, dx, scale, rows):
    for k in prange((y.shape[0] + rows - 1) // rows):
        r = slice(k * rows, min((k + 1) * rows, y.shape[0]))
        softmax_rows_backward(dout[r], y[r], dx[r], scale)


@jit(fastmath=REDUCE, parallel=True)
def logsumexp_rows_par(x, lse, rows):
    for k in prange((x.shape[0] + rows - 1) // rows):
        r = slice(k * rows, min((k + 1) * rows, x.shape[0]))
        logsumexp_rows(x[r], lse[r])


@jit(fastmath=REDUCE, parallel=True)
def weighted_softmax_rows_par(x, lse, w, dx, rows):
    for k in prange((x.shape[0] + rows - 1) // rows):
        r = slice(k * rows, min((k + 1) * rows, x.shape[0]))
        weighted_softmax_rows(x[r], lse[r], w[r], dx[r])
