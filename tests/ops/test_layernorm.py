import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.ops import layernorm_backward, layernorm_forward
from tests.helpers import assert_gradcheck, normal, seeds, torch_oracle


def test_forward_matches_the_definition():
    x, w, b = normal(0, (3, 5), scale=3.0), normal(1, (5,)), normal(2, (5,))
    out, _ = layernorm_forward(x, w, b)
    for row, o in zip(x, out):
        ref = (row - row.mean()) / np.sqrt(row.var() + 1e-5) * w + b
        np.testing.assert_allclose(o, ref, rtol=1e-12, atol=1e-13)


@given(seed=seeds, lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), C=st.integers(2, 7),
       shift=st.floats(-10, 10))
def test_gradcheck_property(seed, lead, C, shift):
    x = normal(seed, (*lead, C), scale=2.0) + shift  # rows with a large common offset too
    assert_gradcheck(layernorm_forward, layernorm_backward, (x, normal(seed + 1, (C,)), normal(seed + 2, (C,))))


def test_torch_oracle():
    torch = pytest.importorskip("torch")
    torch_oracle(layernorm_forward, layernorm_backward,
                 (normal(0, (2, 3, 6), scale=2.0), normal(1, (6,)), normal(2, (6,))),
                 lambda x, w, b: torch.nn.functional.layer_norm(x, (6,), w, b, eps=1e-5))


def test_constant_rows_and_huge_values_stay_finite():
    x = np.concatenate([np.full((1, 4), 7.0), normal(0, (1, 4), scale=1e4)]).astype(np.float32)
    w, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    out, cache = layernorm_forward(x, w, b)
    grads = layernorm_backward(normal(1, x.shape, np.float32), cache)
    assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads)
    np.testing.assert_array_equal(out[0], 0.0)


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="w and b must have shape \\(4,\\)"):
        layernorm_forward(np.zeros((2, 4)), np.ones(3), np.zeros(3))
