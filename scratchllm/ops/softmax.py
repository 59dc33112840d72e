"""Softmax along any axis, numerically stable.

The textbook: the forward and backward as their Math reads. Faster ways to compute the same numbers (a
fused Numba loop per row, a CUDA kernel, NumPy in pieces on every thread) are registered implementations
in ``scratchllm/kernels/``; the model runs them through ``scratchllm.kernels.dispatch``.
"""

from __future__ import annotations

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
    check_inputs(x, axis)
    xp = get_xp(x)
    if not x.size:  # nothing to normalize (an empty softmax axis included, as in torch)
        y = xp.empty_like(x)
        return y, (y, axis)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))  # (...)
    y = e / e.sum(axis=axis, keepdims=True)  # (...)
    return y, (y, axis)


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
    dout = dout.astype(y.dtype, copy=False)
    dx = y * (dout - (dout * y).sum(axis=axis, keepdims=True))  # (...)
    return (dx,)


def check_inputs(x, axis=-1):
    """x a float32/float64 array with an ``axis``: else an error naming the argument."""
    check_float("x", x, ndim_min=1)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for x of shape {x.shape}")
