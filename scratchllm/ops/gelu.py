"""GELU activation: exact (erf) or GPT-2's tanh approximation."""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..backend import erf, get_xp
from ..threads import parallel_chunks
from ._checks import check_dout, check_float

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_APPROXIMATIONS = ("tanh", "none")
# Abramowitz & Stegun 7.1.26 (Hastings): for u >= 0, erfc(u) = t * P(t) * exp(-u^2) + e(u), t = 1 / (1 + p u),
# |e(u)| <= 1.5e-7. PyTorch's vectorized float32 erf on the CPU uses the same constants.
ERFC_P = 0.3275911
ERFC_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)  # P(t) = a1 t^0 + ... + a5 t^4


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
    if kernels.cpu_kernel_for(x):  # one loop (scratchllm/kernels/cpu/gelu.py)
        from ..kernels.cpu import gelu as fused
        return fused.gelu_forward(x, approximate)
    xf = x.reshape(-1)  # (n,) flat: the work is cut into one chunk of elements per CPU thread (threads.py)
    out, saved = xp.empty_like(xf), xp.empty_like(xf)  # (n,) out, and tanh(u) or Phi(x) for the backward
    body = _gelu_tanh if approximate == "tanh" else _gelu_erf
    parallel_chunks(lambda s: body(xf[s], saved[s], out[s]), xf.size, xf.size, xp)
    cache = (x, saved.reshape(x.shape), approximate)
    return out.reshape(x.shape), cache


def _gelu_tanh(x, th, out):
    """The tanh form on (a chunk of) x, in place: th = tanh(u), out = 0.5 * x * (1 + th)."""
    xp = get_xp(x)
    xp.multiply(x, x, out=th)
    th *= 0.044715
    th += 1.0
    th *= x
    th *= SQRT_2_OVER_PI  # u = sqrt(2/pi) * x * (1 + 0.044715 x^2)
    xp.tanh(th, out=th)  # tanh(u)
    xp.add(th, 1.0, out=out)
    out *= x
    out *= 0.5  # 0.5 * x * (1 + tanh(u))


def _gelu_erf(x, cdf, out):
    """The exact form on (a chunk of) x, in place: cdf = Phi(x), out = x * cdf."""
    xp = get_xp(x)
    if xp is np and x.dtype == np.float32:  # 5x faster than SciPy's erf; equal to 3e-7 (tests/ops/test_gelu.py)
        _normal_cdf_float32(x, cdf, out)
    else:
        xp.multiply(x, INV_SQRT_2, out=cdf)
        cdf[...] = erf(cdf)
        cdf += 1.0
        cdf *= 0.5  # Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))
    xp.multiply(x, cdf, out=out)


def _normal_cdf_float32(x, cdf, t):
    """Phi(x) into cdf for float32 x on NumPy, by the rational approximation of erfc above (``t`` is scratch).

    Math (u = |x| / sqrt(2); h = Phi(-|x|) = 0.5 * erfc(u)):
        t   = 1 / (1 + p u)
        h   = 0.5 * t * P(t) * exp(-x^2 / 2)
        Phi = 0.5 + sign(x) * (0.5 - h)
    Max |error| 3e-7 over [-12, 12] in float32 arithmetic (2 ulp of Phi near 1); SciPy's erf costs about
    20 NumPy passes' worth of time per element, this is 18 passes.
    """
    np.abs(x, out=t)
    t *= ERFC_P * INV_SQRT_2
    t += 1.0
    np.divide(1.0, t, out=t)  # t = 1 / (1 + p u)
    np.multiply(t, 0.5 * ERFC_A[4], out=cdf)  # Horner on 0.5 * t * P(t), in cdf
    for a in ERFC_A[3::-1]:
        cdf += 0.5 * a
        cdf *= t
    np.multiply(x, x, out=t)
    t *= -0.5
    np.exp(t, out=t)  # exp(-u^2)
    cdf *= t  # h = Phi(-|x|)
    np.sign(x, out=t)
    np.subtract(0.5, cdf, out=cdf)
    cdf *= t
    cdf += 0.5  # Phi(x): h for x < 0, 1 - h for x >= 0


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
    if kernels.cpu_kernel_for(x, saved):  # the fused CPU kernel
        from ..kernels.cpu import gelu as fused
        return fused.gelu_backward(dout, cache)
    dout = dout.astype(x.dtype, copy=False)
    xf, saved, doutf = x.reshape(-1), saved.reshape(-1), dout.reshape(-1)  # (n,) flat, cut as in the forward
    dx = xp.empty_like(xf)  # (n,)
    body = _gelu_tanh_backward if approximate == "tanh" else _gelu_erf_backward
    parallel_chunks(lambda s: body(xf[s], saved[s], doutf[s], dx[s]), xf.size, xf.size, xp)
    return (dx.reshape(x.shape),)


def _gelu_tanh_backward(x, th, dout, dx):
    """dx = dout * 0.5 * (1 + th + x * (1 - th^2) * du_dx) on (a chunk of) x, with th = tanh(u) from the forward."""
    xp = get_xp(x)
    sech2 = xp.multiply(th, th)  # (n,)
    xp.subtract(1.0, sech2, out=sech2)  # 1 - tanh(u)^2
    xp.multiply(x, x, out=dx)
    dx *= 3.0 * 0.044715
    dx += 1.0
    dx *= SQRT_2_OVER_PI  # du_dx = sqrt(2/pi) * (1 + 3 * 0.044715 * x^2)
    dx *= sech2
    dx *= x
    dx += th
    dx += 1.0
    dx *= 0.5  # dlocal = d gelu / dx
    dx *= dout


def _gelu_erf_backward(x, cdf, dout, dx):
    """dx = dout * (Phi(x) + x * phi(x)) on (a chunk of) x, with cdf = Phi(x) from the forward."""
    xp = get_xp(x)
    xp.multiply(x, x, out=dx)
    dx *= -0.5
    xp.exp(dx, out=dx)
    dx *= INV_SQRT_2PI  # phi(x), recomputed: one exp is cheaper than caching it
    dx *= x
    dx += cdf
    dx *= dout
