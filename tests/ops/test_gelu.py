import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.ops import gelu_backward, gelu_forward
from tests.helpers import assert_gradcheck, normal, seeds, torch_oracle

APPROX = ["tanh", "none"]


@pytest.mark.parametrize("approximate", APPROX)
def test_forward_matches_the_scalar_formula(approximate):
    x = normal(0, (7,), scale=3.0)
    out, _ = gelu_forward(x, approximate=approximate)
    if approximate == "none":
        ref = [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x]
    else:
        ref = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in x]
    np.testing.assert_allclose(out, ref, rtol=1e-14, atol=1e-15)


def test_the_two_forms_differ_a_little():
    x = np.linspace(-4, 4, 101)
    diff = np.abs(gelu_forward(x, "tanh")[0] - gelu_forward(x, "none")[0]).max()
    assert 1e-5 < diff < 1e-3  # the tanh form is an approximation, not the same function


@given(seed=seeds, shape=st.lists(st.integers(1, 4), min_size=0, max_size=3), approximate=st.sampled_from(APPROX))
def test_gradcheck_property(seed, shape, approximate):
    x = normal(seed, shape, scale=3.0)
    assert_gradcheck(lambda a: gelu_forward(a, approximate), gelu_backward, (x,))


@pytest.mark.parametrize("approximate", APPROX)
def test_torch_oracle(approximate):
    torch = pytest.importorskip("torch")
    torch_oracle(lambda x: gelu_forward(x, approximate), gelu_backward, (normal(0, (3, 5), scale=3.0),),
                 lambda x: torch.nn.functional.gelu(x, approximate=approximate))


@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_inputs_stay_finite(approximate, dtype):
    x = np.array([-1e4, -30.0, 0.0, 30.0, 1e4], dtype=dtype)
    out, cache = gelu_forward(x, approximate)
    (dx,) = gelu_backward(np.ones_like(x) * 0.5, cache)
    assert np.isfinite(out).all() and np.isfinite(dx).all()
    np.testing.assert_allclose(out[[0, 4]], [0.0, 1e4])
    np.testing.assert_allclose(dx[[0, 4]], [0.0, 0.5])


def test_unknown_approximation_is_refused():
    with pytest.raises(ValueError, match="approximate must be 'tanh' or 'none'"):
        gelu_forward(np.zeros(3), approximate="erf")
