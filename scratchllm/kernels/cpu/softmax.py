"""Softmax along the last axis, and attention's scaled (causal) softmax, as Numba CPU kernels.

References: ``scratchllm/ops/softmax.py`` (``softmax_forward``/``softmax_backward`` below have the op's
signature and cache, for rows of the last axis), the scale-mask-softmax of ``attention_weights`` in
``scratchllm/ops/attention.py``, and the cross-entropy's ``_logsumexp_rows`` and ``_weighted_softmax_rows``:

    att *= scale;  att = -inf above the causal diagonal;  p = softmax(att, axis=-1)

The forward reads a row once for its max, once to write exp(x - max) and add it up, and once more to
scale by 1 / sum: three sweeps instead of the op's five NumPy passes (seven in attention, with the scale
and the mask). Masked entries are written as exact zeros and their scores never reach the result (not
even a NaN or inf one), so the mask is never built.
The backward is one sweep for sum(dout * y) and one to write dx.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from . import ONE, REDUCE, ZERO, jit, run_rows
from ._math import cast, exp, row_max


# The row loops are written out inside each kernel's loop over rows, not called per row: a call passes the
# arrays (with their reference counts) and costs about 15 ns a row, a quarter of a 64-entry row's softmax.


@jit(fastmath=REDUCE)
def softmax_rows(x, y, scale):
    """y = softmax(x * scale) along the last axis of (n, C) rows (y may be x). Three sweeps per row: the
    max, exp(x * scale - max) and its sum, and the scaling by 1 / sum."""
    n, C = x.shape
    in_place = x.ctypes.data == y.ctypes.data
    for i in range(n):
        top = row_max(x, i, C) * scale  # scale > 0: max(x * scale) = max(x) * scale
        total = ZERO
        if in_place:  # y is x: one array. (A loop over two arrays that overlap fails LLVM's runtime overlap
            for j in range(C):  # check and runs its scalar version, 4x slower.)
                e = exp(y[i, j] * scale - top)
                y[i, j] = e
                total += e
        else:  # two arrays apart: the vector version (35% faster than copying x to y and working in y alone)
            for j in range(C):
                e = exp(x[i, j] * scale - top)
                y[i, j] = e
                total += e
        inv = ONE / total
        for j in range(C):
            y[i, j] *= inv


# A causal row sees its first ``visible`` entries, a different count in every row. Loops that stop there
# pay a mispredicted exit and a scalar tail in each sweep of every row: at T = 64 that was most of the time.
# So the exp sweep runs in whole vector turns, to ``visible`` rounded up to PAD, and drops the masked entries
# by a select on their column index (compared as floats: a vector compare of 64-bit loop indices measured
# twice as slow); a masked entry's exp is taken of 0, not of its score, and dropped. With the rows written
# out (above): 24 x 64 x 64 causal scores 104 -> 65 us.
PAD = 32


@jit(fastmath=REDUCE)
def scaled_causal_softmax_rows(att, p, scale, causal):
    """p = softmax(att * scale, masked) for C-contiguous (n, Tq, Tk) scores (p may be att). Causal: query i
    is position i + Tk - Tq and sees keys j <= i + Tk - Tq; the rest of its row is 0."""
    n, Tq, Tk = att.shape
    att2, y = att.reshape(n * Tq, Tk), p.reshape(n * Tq, Tk)  # (n Tq, Tk) rows, views
    if not causal:
        softmax_rows(att2, y, scale)
        return
    if att.ctypes.data != p.ctypes.data:  # the causal rows are worked in p alone (attention calls this in place)
        for i in range(n * Tq):
            for j in range(Tk):
                y[i, j] = att2[i, j]
    cols = np.arange(Tk).astype(p.dtype)  # (Tk,) column indices as floats (exact below 2^24 in float32)
    for i in range(n * Tq):
        visible = min(i % Tq + Tk - Tq + 1, Tk)
        top = row_max(y, i, visible) * scale
        end = min(Tk, (visible + PAD - 1) // PAD * PAD)  # whole vector turns; entries visible..end-1 masked
        limit = cast(visible, cols[0])  # a float32 compare for float32 scores, not a float64 one
        total = ZERO
        for j in range(end):
            keep = cols[j] < limit
            e = exp(y[i, j] * scale - top if keep else ZERO)
            e = e if keep else ZERO
            y[i, j] = e
            total += e
        inv = ONE / total
        for j in range(end):
            y[i, j] = y[i, j] * inv if cols[j] < limit else ZERO  # masked: exact zeros, even in a NaN row
        for j in range(end, Tk):
            y[i, j] = ZERO


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


def softmax_forward(x, axis=-1):
    """``ops.softmax_forward`` on C-contiguous NumPy arrays along their last axis (checked by the dispatch):
    ``y, (y, axis)``, the rows on every core."""
    y = np.empty_like(x)  # (...) C order, as x
    x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1])  # (N, C) views
    run_rows(softmax_rows, softmax_rows_par, (x2, y2), (x.dtype.type(1.0),), x.size)
    return y, (y, axis)


def softmax_backward(dout, cache):
    """``ops.softmax_backward`` on C-contiguous NumPy arrays along their last axis: ``(dx,)``."""
    y, axis = cache
    dout = np.ascontiguousarray(dout.astype(y.dtype, copy=False))
    dx = np.empty_like(y)  # (...)
    rows = [a.reshape(-1, y.shape[-1]) for a in (dout, y, dx)]  # (N, C) views
    run_rows(softmax_rows_backward, softmax_rows_backward_par, rows, (y.dtype.type(1.0),), y.size)
    return (dx,)
