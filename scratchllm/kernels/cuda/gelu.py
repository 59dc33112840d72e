"""GELU forward and backward as CuPy ElementwiseKernels. Reference: ``scratchllm/ops/gelu.py``.

Same signatures, return values and cache as the op: ``out, (x, th, "tanh")`` with th = tanh(u) for the
tanh approximation, ``out, (x, cdf, "none")`` with cdf = Phi(x) for the exact GELU. Each kernel is one
pass over its arrays (the op's in-place NumPy sequence takes 8 to 10), in the op's order of operations,
so float32 results agree to rounding.

Launch configuration: CuPy's ElementwiseKernel (one thread per element, grid-stride), for any shape and
strides; float32 and float64 through the type placeholder T.

Each kernel is a (in_params, out_params, body) triple in ``ELEMENTWISE``; the tests compile every body as
a __device__ function with nvcc, so a typo fails on a machine without a GPU too.
"""

from __future__ import annotations

import functools

from ...ops.gelu import INV_SQRT_2, INV_SQRT_2PI, SQRT_2_OVER_PI
from ._common import check_dtype, cupy

_C = dict(S=repr(SQRT_2_OVER_PI), K=repr(0.044715), K3=repr(3.0 * 0.044715), R2=repr(INV_SQRT_2),
          R2PI=repr(INV_SQRT_2PI))

ELEMENTWISE = {
    # u = sqrt(2/pi) * x * (1 + 0.044715 x^2);  th = tanh(u);  y = 0.5 * x * (1 + th)
    "scratchllm_gelu_tanh_forward": ("T x", "T y, T th", """
        T u = x * x;
        u = u * T({K});
        u = u + T(1);
        u = u * x;
        u = u * T({S});
        th = tanh(u);
        y = (th + T(1)) * x * T(0.5);
    """.format(**_C)),
    # dx = dout * 0.5 * (1 + th + x * (1 - th^2) * sqrt(2/pi) * (1 + 3 * 0.044715 x^2))
    "scratchllm_gelu_tanh_backward": ("T dout, T x, T th", "T dx", """
        T d = x * x;
        d = d * T({K3});
        d = d + T(1);
        d = d * T({S});
        d = d * (T(1) - th * th);
        d = d * x;
        d = d + th;
        d = d + T(1);
        d = d * T(0.5);
        dx = dout * d;
    """.format(**_C)),
    # cdf = Phi(x) = 0.5 * (1 + erf(x / sqrt(2)));  y = x * cdf
    "scratchllm_gelu_erf_forward": ("T x", "T y, T cdf", """
        cdf = T(0.5) * (T(1) + erf(x * T({R2})));
        y = x * cdf;
    """.format(**_C)),
    # dx = dout * (cdf + x * phi(x)),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    "scratchllm_gelu_erf_backward": ("T dout, T x, T cdf", "T dx", """
        const T pdf = T({R2PI}) * exp(T(-0.5) * x * x);
        dx = dout * (cdf + x * pdf);
    """.format(**_C)),
}


@functools.lru_cache(maxsize=None)
def _ek(name):
    in_params, out_params, body = ELEMENTWISE[name]
    return cupy().ElementwiseKernel(in_params, out_params, body, name)


def gelu_forward(x, approximate="tanh"):
    """``ops.gelu_forward`` on the GPU: ``out, (x, th or cdf, approximate)``."""
    check_dtype(x)
    if approximate == "tanh":
        out, th = _ek("scratchllm_gelu_tanh_forward")(x)
        return out, (x, th, approximate)
    out, cdf = _ek("scratchllm_gelu_erf_forward")(x)
    return out, (x, cdf, approximate)


def gelu_backward(dout, cache):
    """``ops.gelu_backward`` on the GPU: ``(dx,)``."""
    x, saved, approximate = cache
    dout = dout.astype(x.dtype, copy=False)
    name = "scratchllm_gelu_tanh_backward" if approximate == "tanh" else "scratchllm_gelu_erf_backward"
    return (_ek(name)(dout, x, saved),)
