"""Layer normalization over the last axis, with a learned scale ``w`` and shift ``b``."""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import get_xp
from ..threads import parallel_chunks
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
    if kernels.cpu_kernel_for(x, w, b) and x.size:  # one loop per row (scratchllm/kernels/cpu/layernorm.py)
        from ..kernels.cpu import layernorm as fused
        return fused.layernorm_forward(x, w, b, eps)
    x2 = x.reshape(-1, C)  # (N, C) rows, cut into pieces that run on every CPU thread (threads.py)
    out, norm = xp.empty_like(x2), xp.empty_like(x2)  # (N, C)
    rstd = xp.empty((x2.shape[0], 1), dtype=x.dtype)  # (N, 1)
    parallel_chunks(lambda r: _layernorm_rows(x2[r], w, b, eps, out[r], norm[r], rstd[r]), x2.shape[0], x2.size, xp)
    cache = (norm.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)), w)  # x and mean are not kept
    return out.reshape(x.shape), cache


def row_dot(a, b):
    """sum(a * b) over the last axis of (n, C) arrays, kept as (n, 1): a dot product per row by matmul, one
    pass and no (n, C) temporary (3x faster than the product and a NumPy reduction)."""
    return (a[:, None, :] @ b[:, :, None])[:, 0]


def _layernorm_rows(x, w, b, eps, out, norm, rstd):
    """The forward on some rows x (n, C), into out, norm (n, C) and rstd (n, 1)."""
    xp = get_xp(x)
    C = x.shape[-1]
    mean = (x @ xp.full(C, 1.0 / C, dtype=x.dtype))[:, None]  # (n, 1) row means, as a matrix-vector product
    xp.subtract(x, mean, out=norm)  # (n, C) xc, normalized in place below
    var = row_dot(norm, norm) / C  # (n, 1)
    var += eps
    xp.divide(1.0, xp.sqrt(var, out=var), out=rstd)  # (n, 1) rstd = 1 / sqrt(var + eps)
    norm *= rstd  # (n, C) norm = xc * rstd
    xp.multiply(norm, w, out=out)  # (n, C)
    out += b


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
    if kernels.cpu_kernel_for(norm, w) and norm.size:  # the fused CPU kernel
        from ..kernels.cpu import layernorm as fused
        return fused.layernorm_backward(dout, cache)
    dout = dout.astype(norm.dtype, copy=False)
    C = norm.shape[-1]
    dout2, norm2, rstd2 = dout.reshape(-1, C), norm.reshape(-1, C), rstd.reshape(-1, 1)  # rows, as the forward
    dx = get_xp(norm).empty_like(norm2)  # (N, C)
    parts = parallel_chunks(lambda r: _layernorm_rows_backward(dout2[r], norm2[r], rstd2[r], w, dx[r]),
                            norm2.shape[0], norm2.size, get_xp(norm))
    dw, db = parts[0]
    for dw_part, db_part in parts[1:]:  # the pieces' sums over their rows, added in order
        dw = dw + dw_part
        db = db + db_part
    return dx.reshape(norm.shape), dw, db


def _layernorm_rows_backward(dout, norm, rstd, w, dx):
    """The backward on some rows (n, C), into dx; returns these rows' (dw, db) sums."""
    xp = get_xp(norm)
    n, C = norm.shape
    ones = xp.ones(n, dtype=norm.dtype)
    db = ones @ dout  # (C,) sums over the rows, as matrix-vector products
    t = xp.multiply(dout, norm)  # (n, C)
    dw = ones @ t  # (C,)
    dnorm = xp.multiply(dout, w, out=dx)  # (n, C) in dx's buffer: dx is built from it in place
    # dx = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
    t_mean = row_dot(dnorm, norm) / C  # (n, 1) mean(dnorm * norm)
    dnorm_mean = (dnorm @ xp.full(C, 1.0 / C, dtype=norm.dtype))[:, None]  # (n, 1) mean(dnorm)
    xp.multiply(norm, t_mean, out=t)  # (n, C) norm * mean(dnorm * norm)
    dnorm -= dnorm_mean
    dnorm -= t
    dnorm *= rstd  # (n, C) now dx
    return dw, db
