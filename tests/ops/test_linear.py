import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.ops import linear_backward, linear_forward
from tests.helpers import assert_gradcheck, normal, seeds, torch_oracle


def test_forward_matches_a_loop():
    x, w, b = normal(0, (3, 4)), normal(1, (4, 2)), normal(2, (2,))
    out, _ = linear_forward(x, w, b)
    ref = np.array([[sum(x[n, i] * w[i, o] for i in range(4)) + b[o] for o in range(2)] for n in range(3)])
    np.testing.assert_allclose(out, ref, rtol=1e-14)


def test_without_bias_db_is_none():
    x, w = normal(0, (2, 3, 4)), normal(1, (4, 5))
    out, cache = linear_forward(x, w)
    assert out.shape == (2, 3, 5)
    dx, dw, db = linear_backward(normal(2, out.shape), cache)
    assert db is None and dx.shape == x.shape and dw.shape == w.shape
    assert_gradcheck(linear_forward, linear_backward, (x, w))


@given(seed=seeds, lead=st.lists(st.integers(1, 3), min_size=1, max_size=3), cin=st.integers(1, 4),
       cout=st.integers(1, 4), bias=st.booleans())
def test_gradcheck_property(seed, lead, cin, cout, bias):
    inputs = [normal(seed, (*lead, cin)), normal(seed + 1, (cin, cout))]
    if bias:
        inputs.append(normal(seed + 2, (cout,)))
    assert_gradcheck(linear_forward, linear_backward, inputs)


def test_torch_oracle():
    torch_oracle(linear_forward, linear_backward, (normal(0, (2, 3, 4)), normal(1, (4, 5)), normal(2, (5,))),
                 lambda x, w, b: x @ w + b)


def test_large_values_stay_finite():
    x, w, b = normal(0, (3, 4), np.float32, 1e4), normal(1, (4, 2), np.float32), normal(2, (2,), np.float32)
    out, cache = linear_forward(x, w, b)
    grads = linear_backward(normal(3, out.shape, np.float32), cache)
    assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("args, match", [
    ((np.zeros((2, 3)), np.zeros((4, 5))), "x's last axis"),
    ((np.zeros((2, 3)), np.zeros((3, 5)), np.zeros(4)), "b must have shape"),
    ((np.zeros((2, 3)), np.zeros(3)), "w must have 2 dimensions"),
    ((np.zeros((2, 3), np.int64), np.zeros((3, 5))), "x must have dtype float"),
    ((np.zeros((2, 3), np.float32), np.zeros((3, 5))), "w must have the same dtype as x"),
])
def test_bad_input_names_the_argument(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        linear_forward(*args)
