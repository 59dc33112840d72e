import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.ops import attention_backward, attention_forward
from tests.helpers import assert_gradcheck, normal, seeds, torch_oracle


def reference(q, k, v, causal):
    """Row by row, the way the formula reads."""
    B, H, T, D = q.shape
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                keys = range(i + 1) if causal else range(k.shape[2])
                s = np.array([q[b, h, i] @ k[b, h, j] / math.sqrt(D) for j in keys])
                p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
                out[b, h, i] = sum(pj * v[b, h, j] for pj, j in zip(p, keys))
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_forward_matches_the_row_by_row_reference(causal):
    q, k, v = (normal(s, (2, 2, 5, 3)) for s in range(3))
    out, _ = attention_forward(q, k, v, causal=causal)
    np.testing.assert_allclose(out, reference(q, k, v, causal), rtol=1e-12, atol=1e-14)


def test_causal_output_ignores_the_future():
    q, k, v = (normal(s, (1, 1, 6, 4)) for s in range(3))
    out, _ = attention_forward(q, k, v)
    k2, v2 = k.copy(), v.copy()
    k2[..., 3:, :] += 100.0
    v2[..., 3:, :] -= 100.0
    out2, _ = attention_forward(q, k2, v2)
    np.testing.assert_array_equal(out[..., :3, :], out2[..., :3, :])


def test_queries_that_are_the_last_positions_match_the_full_computation():
    q, k, v = (normal(s, (1, 2, 6, 4)) for s in range(3))
    full, _ = attention_forward(q, k, v)
    last, _ = attention_forward(q[:, :, 4:], k, v)  # two new queries against six cached keys
    np.testing.assert_allclose(last, full[:, :, 4:], rtol=1e-13)


@given(seed=seeds, B=st.integers(1, 2), H=st.integers(1, 2), T=st.integers(1, 4), D=st.integers(1, 3),
       causal=st.booleans())
def test_gradcheck_property(seed, B, H, T, D, causal):
    q, k, v = (normal(seed + s, (B, H, T, D)) for s in range(3))
    assert_gradcheck(lambda *a: attention_forward(*a, causal=causal), attention_backward, (q, k, v))


@pytest.mark.parametrize("causal", [True, False])
def test_torch_oracle(causal):
    torch = pytest.importorskip("torch")
    q, k, v = (normal(s, (2, 3, 5, 4)) for s in range(3))
    torch_oracle(lambda *a: attention_forward(*a, causal=causal), attention_backward, (q, k, v),
                 lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_scores_and_masks_stay_finite(dtype):
    q, k, v = (normal(s, (1, 1, 4, 2), dtype, 300.0) for s in range(3))  # scores of order 1e5
    out, cache = attention_forward(q, k, v)
    grads = attention_backward(normal(5, q.shape, dtype), cache)
    assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads)
    dout_last_only = np.zeros_like(q)
    dout_last_only[..., 0, :] = 1.0  # only the first query's output matters: it sees only the first key
    dq, dk, dv = attention_backward(dout_last_only, cache)
    assert not dk[..., 1:, :].any() and not dv[..., 1:, :].any()  # masked keys get exactly zero gradient


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        attention_forward(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="k and v must have shape"):
        attention_forward(np.zeros((1, 1, 3, 2)), np.zeros((1, 1, 3, 4)), np.zeros((1, 1, 3, 4)))
