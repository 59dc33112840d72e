import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.ops import softmax_backward, softmax_forward
from tests.helpers import assert_gradcheck, normal, seeds, torch_oracle


def test_forward_matches_the_definition_on_every_axis():
    x = normal(0, (2, 3, 4), scale=2.0)
    for axis in (0, 1, 2, -1, -2):
        y, _ = softmax_forward(x, axis=axis)
        ref = np.exp(x) / np.exp(x).sum(axis=axis, keepdims=True)
        np.testing.assert_allclose(y, ref, rtol=1e-13)


@given(seed=seeds, shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), data=st.data())
def test_gradcheck_property(seed, shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    x = normal(seed, shape, scale=3.0)
    assert_gradcheck(lambda a: softmax_forward(a, axis=axis), softmax_backward, (x,))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_torch_oracle(axis):
    torch = pytest.importorskip("torch")
    torch_oracle(lambda x: softmax_forward(x, axis), softmax_backward, (normal(0, (3, 4, 5), scale=2.0),),
                 lambda x: torch.softmax(x, dim=axis))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_of_plus_minus_1e4_stay_finite(dtype):
    x = np.array([[1e4, -1e4, 0.0], [1e4, 1e4, -1e4], [-np.inf, 0.0, -np.inf]], dtype=dtype)
    y, cache = softmax_forward(x)
    (dx,) = softmax_backward(normal(1, x.shape, dtype), cache)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    np.testing.assert_allclose(y, [[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0]])


def test_bad_axis_is_refused():
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        softmax_forward(np.zeros((2, 3)), axis=3)


def test_a_long_1d_softmax_is_one_piece_not_a_race():
    """A 1-D x has no other axis to cut along: every thread used to compute the whole of it into the same y
    (wrong sums in about half of these calls)."""
    x = np.random.default_rng(0).standard_normal(2_000_000).astype(np.float32)
    expected = np.exp(x.astype(np.float64) - x.max())
    expected /= expected.sum()
    for _ in range(10):
        y, cache = softmax_forward(x)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-12)
        (dx,) = softmax_backward(np.ones_like(x), cache)
        assert np.abs(dx).max() < 1e-9  # sum(y) = 1: the gradient of a constant


@pytest.mark.parametrize("shape", [(3, 0), (0, 4), (2, 0, 3), (0,)])
def test_empty_inputs_give_empty_outputs(shape):
    """Nothing to normalize, an empty softmax axis included (torch returns an empty tensor too)."""
    y, cache = softmax_forward(np.zeros(shape, np.float32))
    (dx,) = softmax_backward(np.zeros(shape, np.float32), cache)
    assert y.shape == dx.shape == shape and y.dtype == dx.dtype == np.float32
