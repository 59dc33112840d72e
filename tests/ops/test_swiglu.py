"""swiglu (scratchllm/ops/swiglu.py): silu(gate) * up; gradchecks, torch's silu as the oracle, no overflow."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.ops import swiglu_backward, swiglu_forward
from tests.helpers import assert_gradcheck, normal, random_dout, seeds, torch_oracle


def test_forward_matches_the_scalar_formula():
    gate, up = normal(0, (9,), scale=3.0), normal(1, (9,))
    out, _ = swiglu_forward(gate, up)
    np.testing.assert_allclose(out, [g / (1 + np.exp(-g)) * u for g, u in zip(gate, up)], rtol=1e-13)


@given(seed=seeds, shape=st.lists(st.integers(1, 4), min_size=0, max_size=3))
def test_gradcheck_property(seed, shape):
    assert_gradcheck(swiglu_forward, swiglu_backward, (normal(seed, shape, scale=3.0), normal(seed + 1, shape)))


def test_torch_oracle():
    torch = pytest.importorskip("torch")
    torch_oracle(swiglu_forward, swiglu_backward, (normal(2, (3, 5), scale=3.0), normal(3, (3, 5))),
                 lambda g, u: torch.nn.functional.silu(g) * u)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_gates_stay_finite_without_warnings(dtype):
    gate = np.array([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=dtype)
    up = np.full(5, 2.0, dtype=dtype)
    out, cache = swiglu_forward(gate, up)  # RuntimeWarnings are errors in this suite: no exp overflows
    dgate, dup = swiglu_backward(random_dout(out) + 1.0, cache)
    assert np.isfinite(out).all() and np.isfinite(dgate).all() and np.isfinite(dup).all()
    np.testing.assert_allclose(out, [0.0, 0.0, 0.0, 200.0, 2e4], atol=1e-30)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"up must have gate's shape \(2, 3\); got \(3, 2\)"):
        swiglu_forward(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="up must have the same dtype as gate"):
        swiglu_forward(np.zeros(3), np.zeros(3, np.float32))
