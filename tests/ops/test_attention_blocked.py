"""The blocked causal attention equals the plain one (values and gradients) for any block size."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.ops import (attention_backward, attention_blocked_backward, attention_blocked_forward,
                            attention_forward)
from tests.helpers import assert_gradcheck, normal, seeds


@given(seed=seeds, B=st.integers(1, 2), H=st.integers(1, 2), T=st.integers(1, 9), extra=st.integers(0, 3),
       D=st.integers(1, 4), block=st.integers(1, 10))
def test_equals_plain_attention(seed, B, H, T, extra, D, block):
    q = normal(seed, (B, H, T, D))
    k, v = normal(seed + 1, (B, H, T + extra, D)), normal(seed + 2, (B, H, T + extra, D))
    ref, ref_cache = attention_forward(q, k, v, causal=True)
    out, cache = attention_blocked_forward(q, k, v, block=block)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)
    dout = normal(seed + 3, out.shape)
    for a, b in zip(attention_blocked_backward(dout, cache), attention_backward(dout, ref_cache)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@given(seed=seeds, T=st.integers(1, 6), block=st.integers(1, 4), dropout=st.sampled_from([0.0, 0.3]))
def test_gradcheck_property(seed, T, block, dropout):
    q, k, v = (normal(seed + i, (1, 2, T, 3)) for i in range(3))
    assert_gradcheck(lambda *a: attention_blocked_forward(*a, dropout=dropout, rng=seed, block=block),
                     attention_blocked_backward, (q, k, v))


def test_float32_matches_float64_and_errors():
    q, k, v = (normal(i, (2, 3, 40, 8), np.float32) for i in range(3))
    out32, _ = attention_blocked_forward(q, k, v, block=16)
    out64, _ = attention_forward(*(a.astype(np.float64) for a in (q, k, v)))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="block must be >= 1"):
        attention_blocked_forward(q, k, v, block=0)
    with pytest.raises(ValueError, match="at least as many keys"):
        attention_blocked_forward(q, k[:, :, :10], v[:, :, :10])
