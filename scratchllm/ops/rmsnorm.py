"""Root-mean-square normalization over the last axis, with a learned scale ``w`` (Llama's RMSNorm).

LayerNorm without the mean: each row is divided by its root mean square, then scaled. No shift. The textbook: the
forward and backward as their Math reads (docs/backprop.md, section 10; section 14 writes it as a user's own op
and plants a bug in it).
"""

from __future__ import annotations

from ..backend import get_xp
from ._checks import check_dout, check_float, check_same_dtype


def rmsnorm_forward(x, w, eps=1e-6):
    """Divide each row of ``x`` by its root mean square, then scale.

    Shapes:
        x (..., C), w (C,)  ->  out (..., C)

    Math (per row, over the C entries):
        ms   = sum(x^2) / C
        rrms = 1 / sqrt(ms + eps)
        norm = x * rrms
        out  = norm * w
    """
    check_inputs(x, w)
    xp = get_xp(x, w)
    ms = (x * x).mean(axis=-1, keepdims=True)  # (..., 1)
    rrms = 1.0 / xp.sqrt(ms + eps)  # (..., 1)
    norm = x * rrms  # (..., C)
    out = norm * w  # (..., C)
    cache = (norm, rrms, w)
    return out, cache


def rmsnorm_backward(dout, cache):
    """Gradients of ``rmsnorm_forward``.

    Shapes:
        dout (..., C)  ->  dx (..., C), dw (C,)

    Math (mean(.) is over the last axis; sum over rows for dw):
        dw    = sum(dout * norm)
        dnorm = dout * w
        dx    = rrms * (dnorm - norm * mean(dnorm * norm))
    From d rrms / d x_j = -rrms^3 x_j / C: d norm_i / d x_j = rrms * (delta_ij - norm_i * norm_j / C), which is
    layernorm's without the -1/C (no mean was subtracted).
    """
    norm, rrms, w = cache
    check_dout(dout, norm.shape)
    dout = dout.astype(norm.dtype, copy=False)
    C = norm.shape[-1]
    dw = (dout * norm).reshape(-1, C).sum(axis=0)  # (C,)
    dnorm = dout * w  # (..., C)
    dx = rrms * (dnorm - norm * (dnorm * norm).mean(axis=-1, keepdims=True))  # (..., C)
    return dx, dw


def check_inputs(x, w):
    """x (..., C) and w (C,), float32 or float64 alike: else a TypeError or ValueError naming the argument."""
    check_float("x", x, ndim_min=1)
    check_float("w", w, ndim=1)
    if w.shape != (x.shape[-1],):
        raise ValueError(f"w must have shape ({x.shape[-1]},) to match x {x.shape}; got {w.shape}")
    check_same_dtype(x=x, w=w)
