"""Layer normalization over the last axis, with a learned scale ``w`` and shift ``b``.

The textbook: the forward and backward as their Math reads. Faster ways to compute the same numbers (a
fused Numba loop per row, a CUDA kernel, NumPy in pieces on every thread) are registered implementations
in ``scratchllm/kernels/``; the model runs them through ``scratchllm.kernels.dispatch``.
"""

from __future__ import annotations

from ..backend import get_xp
from ._checks import check_dout, check_float, check_same_dtype


def layernorm_forward(x, w, b, eps=1e-5):
    """Normalize each row of ``x`` to zero mean and unit variance, then scale and shift.

    Shapes:
        x (..., C), w (C,), b (C,)  ->  out (..., C)

    Math (per row, over the C entries; var is the biased variance, as in PyTorch):
        mean = sum(x) / C
        xc   = x - mean
        var  = sum(xc^2) / C
        rstd = 1 / sqrt(var + eps)
        norm = xc * rstd
        out  = norm * w + b
    """
    check_inputs(x, w, b)
    xp = get_xp(x, w, b)
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean  # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / xp.sqrt(var + eps)  # (..., 1)
    norm = xc * rstd  # (..., C)
    out = norm * w + b  # (..., C)
    cache = (norm, rstd, w)  # x and mean are not needed again
    return out, cache


def layernorm_backward(dout, cache):
    """Gradients of ``layernorm_forward``.

    Shapes:
        dout (..., C)  ->  dx (..., C), dw (C,), db (C,)

    Math (mean(.) is over the last axis; sum over rows for dw, db):
        db    = sum(dout)
        dw    = sum(dout * norm)
        dnorm = dout * w
        dx    = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
    The two mean terms come from mean and rstd depending on every entry of the row:
    d norm_i / d x_j = rstd * (delta_ij - 1/C - norm_i * norm_j / C).
    """
    norm, rstd, w = cache
    check_dout(dout, norm.shape)
    dout = dout.astype(norm.dtype, copy=False)
    C = norm.shape[-1]
    db = dout.reshape(-1, C).sum(axis=0)  # (C,)
    dw = (dout * norm).reshape(-1, C).sum(axis=0)  # (C,)
    dnorm = dout * w  # (..., C)
    dx = rstd * (dnorm - dnorm.mean(axis=-1, keepdims=True)
                 - norm * (dnorm * norm).mean(axis=-1, keepdims=True))  # (..., C)
    return dx, dw, db


def check_inputs(x, w, b):
    """x (..., C) and w, b (C,), float32 or float64 alike: else a TypeError or ValueError naming the argument."""
    check_float("x", x, ndim_min=1)
    C = x.shape[-1]
    check_float("w", w, ndim=1)
    check_float("b", b, ndim=1)
    if w.shape != (C,) or b.shape != (C,):
        raise ValueError(f"w and b must have shape ({C},) to match x {x.shape}; got w {w.shape}, b {b.shape}")
    check_same_dtype(x=x, w=w, b=b)
