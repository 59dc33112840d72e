"""GELU forward and backward as Numba CPU kernels. Reference: ``scratchllm/ops/gelu.py``.

Same signatures, return values and cache as the op: ``out, (x, th, "tanh")`` with th = tanh(u) for the
tanh approximation, ``out, (x, cdf, "none")`` with cdf = Phi(x) for the exact GELU. Each kernel is one
pass over its arrays (the op's in-place NumPy sequence takes 8 to 18). Float32 uses the vectorized tanh and
Phi of ``_math.py`` (errors 2e-7 and 3e-7 absolute); float64 the C library's tanh and erf.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..threads import parallel_chunks
from . import ONE, jit, prange_rows
from ._math import SQRT_2_OVER_PI, cast, exp, phi_cdf, tanh

INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)
HALF = np.float32(0.5)


@jit(fastmath={"contract"})
def _tanh_forward(x, th, out):
    """u = sqrt(2/pi) * x * (1 + 0.044715 x^2);  th = tanh(u);  out = 0.5 * x * (1 + th)."""
    for i in range(x.shape[0]):
        v = x[i]
        t = tanh(cast(SQRT_2_OVER_PI, v) * v * (ONE + cast(0.044715, v) * v * v))
        th[i] = t
        out[i] = HALF * v * (ONE + t)


@jit(fastmath={"contract"})
def _tanh_backward(x, th, dout, dx):
    """dx = dout * 0.5 * (1 + th + x * (1 - th^2) * sqrt(2/pi) * (1 + 3 * 0.044715 x^2))."""
    for i in range(x.shape[0]):
        v, t = x[i], th[i]
        du_dx = cast(SQRT_2_OVER_PI, v) * (ONE + cast(3 * 0.044715, v) * v * v)
        dx[i] = dout[i] * HALF * (ONE + t + v * (ONE - t * t) * du_dx)


@jit(fastmath={"contract"})
def _erf_forward(x, cdf, out):
    """cdf = Phi(x);  out = x * cdf."""
    for i in range(x.shape[0]):
        c = phi_cdf(x[i])
        cdf[i] = c
        out[i] = x[i] * c


@jit(fastmath={"contract"})
def _erf_backward(x, cdf, dout, dx):
    """dx = dout * (Phi(x) + x * phi(x)),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi) (recomputed, not cached)."""
    for i in range(x.shape[0]):
        v = x[i]
        dx[i] = dout[i] * (cdf[i] + v * cast(INV_SQRT_2PI, v) * exp(-HALF * v * v))


@jit(parallel=True)
def _forward_par(x, saved, out, tanh_approx, piece):
    """The forward over pieces of ``piece`` elements on every core (``prange_rows``)."""
    for k in prange((x.shape[0] + piece - 1) // piece):
        s = slice(k * piece, min((k + 1) * piece, x.shape[0]))
        if tanh_approx:
            _tanh_forward(x[s], saved[s], out[s])
        else:
            _erf_forward(x[s], saved[s], out[s])


@jit(parallel=True)
def _backward_par(x, saved, dout, dx, tanh_approx, piece):
    """The backward over pieces of ``piece`` elements on every core (``prange_rows``)."""
    for k in prange((x.shape[0] + piece - 1) // piece):
        s = slice(k * piece, min((k + 1) * piece, x.shape[0]))
        if tanh_approx:
            _tanh_backward(x[s], saved[s], dout[s], dx[s])
        else:
            _erf_backward(x[s], saved[s], dout[s], dx[s])


def gelu_forward(x, approximate="tanh"):
    """``ops.gelu_forward`` on NumPy arrays (checked by the op): ``out, (x, saved, approximate)``."""
    xf = np.ascontiguousarray(x).reshape(-1)  # (n,) flat, one chunk of elements per CPU thread
    out, saved = np.empty_like(xf), np.empty_like(xf)  # (n,) out, and tanh(u) or Phi(x)
    piece = prange_rows(xf.size, xf.size)
    if piece:
        _forward_par(xf, saved, out, approximate == "tanh", piece)
    else:
        body = _tanh_forward if approximate == "tanh" else _erf_forward
        parallel_chunks(lambda s: body(xf[s], saved[s], out[s]), xf.size, xf.size, np, fused=True)
    return out.reshape(x.shape), (x, saved.reshape(x.shape), approximate)


def gelu_backward(dout, cache):
    """``ops.gelu_backward`` on NumPy arrays (checked by the op): ``(dx,)``."""
    x, saved, approximate = cache
    xf = np.ascontiguousarray(x).reshape(-1)  # (n,)
    savedf = np.ascontiguousarray(saved).reshape(-1)  # (n,)
    doutf = np.ascontiguousarray(dout.astype(x.dtype, copy=False)).reshape(-1)  # (n,)
    dx = np.empty_like(xf)  # (n,)
    piece = prange_rows(xf.size, xf.size)
    if piece:
        _backward_par(xf, savedf, doutf, dx, approximate == "tanh", piece)
    else:
        body = _tanh_backward if approximate == "tanh" else _erf_backward
        parallel_chunks(lambda s: body(xf[s], savedf[s], doutf[s], dx[s]), xf.size, xf.size, np, fused=True)
    return (dx.reshape(x.shape),)
