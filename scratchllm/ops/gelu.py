"""GELU activation: exact (erf) or GPT-2's tanh approximation.

The textbook: the forward and backward as their Math reads. Faster ways to compute the same numbers (a
fused Numba loop, a CUDA kernel, NumPy in pieces on every thread) are registered implementations in
``scratchllm/kernels/``; the model runs them through ``scratchllm.kernels.dispatch``.
"""

from __future__ import annotations

import math

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
    check_inputs(x, approximate)
    xp = get_xp(x)
    if approximate == "tanh":
        u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)  # (...)
        th = xp.tanh(u)  # (...)
        out = 0.5 * x * (1 + th)  # (...)
        return out, (x, th, approximate)
    cdf = 0.5 * (1 + erf(x * INV_SQRT_2))  # (...) Phi(x)
    out = x * cdf  # (...)
    return out, (x, cdf, approximate)


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
    dout = dout.astype(x.dtype, copy=False)
    if approximate == "tanh":
        th = saved  # tanh(u)
        du_dx = SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)  # (...)
        dlocal = 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * du_dx  # (...) d out / d x
    else:
        cdf = saved  # Phi(x)
        pdf = INV_SQRT_2PI * xp.exp(-0.5 * x * x)  # (...) phi(x)
        dlocal = cdf + x * pdf  # (...) d out / d x
    dx = dout * dlocal  # (...)
    return (dx,)


def check_inputs(x, approximate="tanh"):
    """x a float32/float64 array and approximate "tanh" or "none": else an error naming the argument."""
    check_float("x", x)
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate must be 'tanh' or 'none'; got {approximate!r}")
