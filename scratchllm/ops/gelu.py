"""GELU activation: exact (erf) or GPT-2's tanh approximation."""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..backend import erf, get_xp
from ._checks import check_dout, check_float

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_APPROXIMATIONS = ("tanh", "none")


def gelu_forward(x, approximate="tanh"):
    """Gaussian Error Linear Unit, elementwise.

    Shapes:
        x (...)  ->  out (...)

    Math:
        approximate="none":  out = x * Phi(x),  Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))
        approximate="tanh":  out = 0.5 * x * (1 + tanh(u)),  u = sqrt(2/pi) * (x + 0.044715 * x^3)
    """
    check_float("x", x)
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate must be 'tanh' or 'none'; got {approximate!r}")
    xp = get_xp(x)
    if xp is not np and kernels.enabled():  # one fused CUDA pass (scratchllm/kernels/gelu.py)
        return kernels.gelu_forward(x, approximate)
    if approximate == "tanh":
        # in place on one fresh buffer: u = sqrt(2/pi) * x * (1 + 0.044715 x^2), then th = tanh(u)
        th = xp.multiply(x, x, out=xp.empty_like(x))  # (...) out= keeps 0-d inputs arrays
        th *= 0.044715
        th += 1.0
        th *= x
        th *= SQRT_2_OVER_PI  # u
        xp.tanh(th, out=th)  # (...) tanh(u)
        out = xp.add(th, 1.0, out=xp.empty_like(x))  # (...)
        out *= x
        out *= 0.5  # 0.5 * x * (1 + tanh(u))
        cache = (x, th, approximate)
    else:
        cdf = 0.5 * (1.0 + erf(x * INV_SQRT_2))  # (...) Phi(x)
        out = x * cdf  # (...)
        cache = (x, cdf, approximate)
    return out, cache


def gelu_backward(dout, cache):
    """Gradient of ``gelu_forward``.

    Shapes:
        dout (...)  ->  (dx (...),)

    Math:
        approximate="none":  dx = dout * (Phi(x) + x * phi(x)),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
        approximate="tanh":  dx = dout * (0.5 * (1 + tanh(u))
                                         + 0.5 * x * (1 - tanh(u)^2) * sqrt(2/pi) * (1 + 3 * 0.044715 * x^2))
    """
    x, saved, approximate = cache
    check_dout(dout, x.shape)
    xp = get_xp(x)
    if xp is not np and kernels.enabled():  # one fused CUDA pass
        return kernels.gelu_backward(dout, cache)
    dout = dout.astype(x.dtype, copy=False)
    if approximate == "tanh":
        th = saved  # tanh(u), kept from the forward
        # dlocal = 0.5 * (1 + th + x * (1 - th^2) * du_dx), built in place on two fresh buffers
        dlocal = xp.multiply(x, x, out=xp.empty_like(x))  # (...)
        dlocal *= 3.0 * 0.044715
        dlocal += 1.0
        dlocal *= SQRT_2_OVER_PI  # du_dx
        sech2 = xp.multiply(th, th, out=xp.empty_like(x))  # (...)
        xp.subtract(1.0, sech2, out=sech2)  # 1 - tanh(u)^2
        dlocal *= sech2
        dlocal *= x
        dlocal += th
        dlocal += 1.0
        dlocal *= 0.5
    else:
        cdf = saved  # Phi(x), kept from the forward
        pdf = INV_SQRT_2PI * xp.exp(-0.5 * x * x)  # (...) recomputed: one exp is cheaper than caching
        dlocal = cdf + x * pdf  # (...)
    dx = dout * dlocal  # (...)
    return (dx,)
