"""Layer normalization over the last axis, with a learned scale ``w`` and shift ``b``."""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import get_xp
from ._checks import check_dout, check_float, check_same_dtype


def layernorm_forward(x, w, b, eps=1e-5):
    """Normalize each row of ``x`` to zero mean and unit variance, then scale and shift.

    Shapes:
        x (..., C), w (C,), b (C,)  ->  out (..., C)

    Math (per row, over the C entries; var is the biased variance, as in PyTorch):
        mean = sum(x) / C
        var  = sum((x - mean)^2) / C
        rstd = 1 / sqrt(var + eps)
        norm = (x - mean) * rstd
        out  = norm * w + b
    """
    check_float("x", x, ndim_min=1)
    C = x.shape[-1]
    check_float("w", w, ndim=1)
    check_float("b", b, ndim=1)
    if w.shape != (C,) or b.shape != (C,):
        raise ValueError(f"w and b must have shape ({C},) to match x {x.shape}; got w {w.shape}, b {b.shape}")
    check_same_dtype(x=x, w=w, b=b)
    xp = get_xp(x, w, b)
    if xp is not np and kernels.enabled() and x.size:  # the fused CUDA kernel (scratchllm/kernels/layernorm.py)
        return kernels.layernorm_forward(x, w, b, eps)
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    norm = x - mean  # (..., C) xc, normalized in place below
    var = (norm * norm).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / xp.sqrt(var + eps)  # (..., 1)
    norm *= rstd  # (..., C) norm = xc * rstd
    out = norm * w  # (..., C)
    out += b
    cache = (norm, rstd, w)  # x and mean are not kept: backward needs only norm and rstd
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
    if get_xp(norm) is not np and kernels.enabled() and norm.size:  # the fused CUDA kernels
        return kernels.layernorm_backward(dout, cache)
    dout = dout.astype(norm.dtype, copy=False)
    C = norm.shape[-1]
    dout2 = dout.reshape(-1, C)  # (N, C)
    db = dout2.sum(axis=0)  # (C,)
    dw = (dout2 * norm.reshape(-1, C)).sum(axis=0)  # (C,)
    dnorm = dout * w  # (..., C)
    # dx = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), in place on dnorm's buffer
    t = dnorm * norm  # (..., C)
    t_mean = t.mean(axis=-1, keepdims=True)  # (..., 1) mean(dnorm * norm)
    dnorm_mean = dnorm.mean(axis=-1, keepdims=True)  # (..., 1) mean(dnorm)
    get_xp(t).multiply(norm, t_mean, out=t)  # (..., C) norm * mean(dnorm * norm)
    dx = dnorm  # the buffer is ours: dnorm is not needed any more
    dx -= dnorm_mean
    dx -= t
    dx *= rstd  # (..., C)
    return dx, dw, db
