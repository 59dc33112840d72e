"""Softmax along any axis, numerically stable."""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import get_xp
from ..kernels.cpu import run_rows  # a fused kernel over rows, on every core
from ..threads import parallel_chunks
from ._checks import check_dout, check_float


def softmax_forward(x, axis=-1):
    """Softmax along ``axis``.

    Shapes:
        x (...)  ->  y (...), each slice along ``axis`` sums to 1

    Math:
        y = exp(x - max(x)) / sum(exp(x - max(x)))
    Subtracting the max changes nothing mathematically and keeps exp() from overflowing; entries of
    -inf (masked positions) give exactly 0 as long as one entry of the slice is finite.
    """
    check_float("x", x, ndim_min=1)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for x of shape {x.shape}")
    xp = get_xp(x)
    if xp is not np and kernels.enabled() and x.size:  # the fused CUDA kernel (scratchllm/kernels/softmax.py)
        return kernels.softmax_forward(x, axis)
    y = xp.empty_like(x, order="C")  # (...) C order, so that its rows below are views
    if not x.size:  # nothing to normalize (an empty softmax axis included, as in torch)
        return y, (y, axis)
    rows = _kernel_rows(axis, x, y)  # (N, C) views, when the fused CPU kernel takes them
    if rows:  # one loop per row (kernels/cpu/softmax.py)
        from ..kernels.cpu import softmax as fused
        (x2, y2), one = rows, x.dtype.type(1.0)
        run_rows(fused.softmax_rows, fused.softmax_rows_par, (x2, y2), (one,), x.size)  # on every core
    else:  # cut into pieces along another axis, run on every CPU thread (threads.py)
        along = _pieces_axis(x.ndim, axis)
        parallel_chunks(lambda r: softmax_rows(x[along(r)], y[along(r)], axis), along.count(x.shape), x.size, xp)
    cache = (y, axis)
    return y, cache


def _kernel_rows(axis, *arrays):
    """The arrays as (N, C) rows of their last axis when ``axis`` is that axis and the fused CPU kernel takes
    them (``fused_rows``), else None. The fused path cuts these rows into pieces; the NumPy code keeps its cut
    along a leading axis below (measured faster for it: whole (T, C) matrices as pieces)."""
    first = arrays[0]
    if axis not in (-1, first.ndim - 1) or not first.size or not all(a.flags.c_contiguous for a in arrays):
        return None  # (C-contiguous first: the reshape below is then a view, never a copy thrown away)
    rows = [a.reshape(-1, first.shape[-1]) for a in arrays]
    return rows if fused_rows(*rows) else None


def _pieces_axis(ndim, axis):
    """A function rows -> index that slices an array along an axis other than ``axis``; its ``.count(shape)``
    is the number of rows to cut (1 for a 1-D array: one piece, the whole softmax axis)."""
    cut = 0 if axis % ndim != 0 or ndim == 1 else 1

    def along(rows):
        return (slice(None),) * cut + (rows if ndim > 1 else slice(None),)

    along.count = lambda shape: shape[cut] if ndim > 1 else 1
    return along


def softmax_rows(x, y, axis=-1):
    """softmax(x) along ``axis`` into y (which may be x itself), for a piece of the input."""
    xp = get_xp(x)
    last = axis in (-1, x.ndim - 1)
    if last and fused_rows(x, y):  # one loop per row (scratchllm/kernels/cpu/softmax.py)
        from ..kernels.cpu import softmax as fused
        fused.softmax_rows(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), x.dtype.type(1.0))
        return
    if last:  # the max read at argmax: NumPy's argmax is 2x faster than its max along short rows
        top = xp.take_along_axis(x, x.argmax(axis=-1)[..., None], axis=-1)  # (..., 1)
    else:
        top = x.max(axis=axis, keepdims=True)  # (..., 1, ...)
    xp.subtract(x, top, out=y)  # exponentiated and normalized in place
    xp.exp(y, out=y)
    if last:  # sums along the last axis as a matrix-vector product: 3x faster in BLAS
        total = (y @ xp.ones(y.shape[-1], dtype=y.dtype))[..., None]  # (..., 1)
    else:
        total = y.sum(axis=axis, keepdims=True)  # (..., 1, ...)
    y *= xp.divide(1.0, total, out=total)  # one reciprocal per slice, then multiplies (faster than dividing)


def fused_rows(*arrays):
    """True when the fused CPU kernels take these arrays (``kernels.cpu_kernel_for``): C-contiguous, of one
    dtype (rows of the last axis, viewed as (n, C) without a copy), and any two either the very same
    memory (in place) or apart (a partial overlap would read entries already written)."""
    first = arrays[0]
    return (first.size > 0 and all(a.flags.c_contiguous and a.dtype == first.dtype for a in arrays)
            and kernels.cpu_kernel_for(*arrays)
            and all(not np.may_share_memory(a, b) or (a.shape == b.shape and a.ctypes.data == b.ctypes.data)
                    for i, a in enumerate(arrays) for b in arrays[i + 1:]))  # apart (checked first: cheaper)


def softmax_backward(dout, cache):
    """Gradient of ``softmax_forward``.

    Shapes:
        dout (...)  ->  (dx (...),)

    Math (sums along ``axis``):
        dy_i/dx_j = y_i * (delta_ij - y_j)
        dx = y * (dout - sum(dout * y))
    """
    y, axis = cache
    check_dout(dout, y.shape)
    if get_xp(y) is not np and kernels.enabled() and y.size:  # the fused CUDA kernel
        return kernels.softmax_backward(dout, cache)
    dout = dout.astype(y.dtype, copy=False)
    xp = get_xp(y)
    dx = xp.empty_like(y, order="C")  # (...) C order, as the forward's y
    if not y.size:
        return (dx,)
    rows = _kernel_rows(axis, dout, y, dx)  # (N, C) views, as in the forward
    if rows:  # the fused CPU kernel
        from ..kernels.cpu import softmax as fused
        (dout2, y2, dx2), one = rows, y.dtype.type(1.0)
        run_rows(fused.softmax_rows_backward, fused.softmax_rows_backward_par, (dout2, y2, dx2), (one,), y.size)
    else:
        along = _pieces_axis(y.ndim, axis)
        parallel_chunks(lambda r: softmax_rows_backward(dout[along(r)], y[along(r)], dx[along(r)], axis),
                        along.count(y.shape), y.size, xp)
    return (dx,)


def softmax_rows_backward(dout, y, dx, axis=-1, scale=1.0):
    """dx = scale * y * (dout - sum(dout * y)) along ``axis``, into dx (which may be dout itself), for a
    piece. ``scale`` folds in a factor the caller would otherwise apply in another pass (attention's)."""
    xp = get_xp(y)
    if axis in (-1, y.ndim - 1) and fused_rows(dout, y, dx):  # the fused CPU kernel
        from ..kernels.cpu import softmax as fused
        rows = [a.reshape(-1, a.shape[-1]) for a in (dout, y, dx)]
        fused.softmax_rows_backward(*rows, y.dtype.type(scale))
        return
    if axis in (-1, y.ndim - 1):  # sum(dout * y) along the last axis: a dot product per row, by matmul
        total = (dout[..., None, :] @ y[..., :, None])[..., 0]  # (..., 1)
    else:
        total = (dout * y).sum(axis=axis, keepdims=True)  # (..., 1, ...)
    xp.subtract(dout, total, out=dx)
    dx *= y
    if scale != 1.0:
        dx *= scale
