"""Softmax along any axis, numerically stable."""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import get_xp
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
    y = x - x.max(axis=axis, keepdims=True)  # (...) a fresh buffer, exponentiated and normalized in place
    xp.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)  # (...)
    cache = (y, axis)
    return y, cache


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
    dx = dout * y  # (...) reused below: dx = y * (dout - sum(dout * y))
    total = dx.sum(axis=axis, keepdims=True)  # (..., 1, ...)
    get_xp(dx).subtract(dout, total, out=dx)
    dx *= y
    return (dx,)
