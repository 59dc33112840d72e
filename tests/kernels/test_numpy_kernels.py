"""The pure-NumPy implementations (kernels/numpy/): the parts of them that the registry test
(tests/kernels/test_registry.py) does not reach on its own."""

import math

import numpy as np

from scratchllm import ops
from scratchllm.kernels.numpy import gelu
from scratchllm.kernels.numpy.gelu import _normal_cdf_float32


def test_float32_normal_cdf_equals_the_exact_one():
    """The float32 fast path of the exact form (a rational erfc approximation) against SciPy's erf in float64."""
    x = np.concatenate([np.linspace(-12, 12, 200_001), [0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0]]).astype(np.float32)
    exact = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x[::97].astype(np.float64)])
    cdf = np.empty_like(x)
    _normal_cdf_float32(x, cdf, np.empty_like(x))
    assert cdf.dtype == np.float32
    np.testing.assert_allclose(cdf[::97], exact, rtol=0, atol=4e-7)
    np.testing.assert_array_equal(cdf[-6:], [0.5, 0.5, 0.5, 0.5, 1.0, 0.0])
    out32, _ = gelu.gelu_forward(x, "none")
    out64, _ = ops.gelu_forward(x.astype(np.float64), "none")
    np.testing.assert_allclose(out32, out64, rtol=0, atol=4e-7 * 12)  # |x * dPhi| <= 12 * 3e-7
