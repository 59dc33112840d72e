"""Softmax in NumPy, in pieces on every CPU thread. Reference: ``scratchllm/ops/softmax.py``.

Same signature, return values and cache as the op (``y, (y, axis)``). Faster than the textbook by working in
place (y is exponentiated and normalized in its own buffer), by reading the max at the argmax and summing
rows as matrix-vector products along the last axis, and by cutting the work along another axis into pieces
that run on every CPU thread (``threads.parallel_chunks``).
"""

from __future__ import annotations

import numpy as np

from ..threads import parallel_chunks


def softmax_forward(x, axis=-1):
    """``ops.softmax_forward`` on NumPy arrays (checked by the dispatch): ``y, (y, axis)``."""
    y = np.empty_like(x, order="C")  # (...) C order, so that pieces of it are plain views
    along = pieces_axis(x.ndim, axis)
    parallel_chunks(lambda r: softmax_rows(x[along(r)], y[along(r)], axis), along.count(x.shape), x.size, np)
    return y, (y, axis)


def softmax_backward(dout, cache):
    """``ops.softmax_backward`` on NumPy arrays (checked by the dispatch): ``(dx,)``."""
    y, axis = cache
    dout = dout.astype(y.dtype, copy=False)
    dx = np.empty_like(y, order="C")  # (...)
    along = pieces_axis(y.ndim, axis)
    parallel_chunks(lambda r: softmax_rows_backward(dout[along(r)], y[along(r)], dx[along(r)], axis),
                    along.count(y.shape), y.size, np)
    return (dx,)


def pieces_axis(ndim, axis):
    """A function rows -> index that slices an array along an axis other than ``axis``; its ``.count(shape)``
    is the number of rows to cut (1 for a 1-D array: one piece, the whole softmax axis)."""
    cut = 0 if axis % ndim != 0 or ndim == 1 else 1

    def along(rows):
        return (slice(None),) * cut + (rows if ndim > 1 else slice(None),)

    along.count = lambda shape: shape[cut] if ndim > 1 else 1
    return along


def softmax_rows(x, y, axis=-1):
    """softmax(x) along ``axis`` into y (which may be x itself), for a piece of the input."""
    last = axis in (-1, x.ndim - 1)
    if last:  # the max read at argmax: NumPy's argmax is 2x faster than its max along short rows
        top = np.take_along_axis(x, x.argmax(axis=-1)[..., None], axis=-1)  # (..., 1)
    else:
        top = x.max(axis=axis, keepdims=True)  # (..., 1, ...)
    np.subtract(x, top, out=y)  # exponentiated and normalized in place
    np.exp(y, out=y)
    if last:  # sums along the last axis as a matrix-vector product: 3x faster in BLAS
        total = (y @ np.ones(y.shape[-1], dtype=y.dtype))[..., None]  # (..., 1)
    else:
        total = y.sum(axis=axis, keepdims=True)  # (..., 1, ...)
    y *= np.divide(1.0, total, out=total)  # one reciprocal per slice, then multiplies (faster than dividing)


def softmax_rows_backward(dout, y, dx, axis=-1, scale=1.0):
    """dx = scale * y * (dout - sum(dout * y)) along ``axis``, into dx (which may be dout itself), for a
    piece. ``scale`` folds in a factor the caller would otherwise apply in another pass (attention's)."""
    if axis in (-1, y.ndim - 1):  # sum(dout * y) along the last axis: a dot product per row, by matmul
        total = (dout[..., None, :] @ y[..., :, None])[..., 0]  # (..., 1)
    else:
        total = (dout * y).sum(axis=axis, keepdims=True)  # (..., 1, ...)
    np.subtract(dout, total, out=dx)
    dx *= y
    if scale != 1.0:
        dx *= scale
