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


@pytest.mark.parametrize("T, extra, block", [(9, 0, 4), (9, 3, 2), (6, 0, 6)])
def test_gradients_written_into_out_views(T, extra, block):
    """``out``: dq, dk, dv written into given arrays of any layout (GPT's: the thirds of a (B, T, 3, H, D)
    array), the same numbers as new arrays; a wrong shape or dtype names the argument."""
    B, H, D = 2, 3, 4
    qkv = normal(0, (B, T + extra, 3 * H * D))
    q, k, v = qkv.reshape(B, T + extra, 3, H, D).transpose(2, 0, 3, 1, 4)  # (B, H, T + extra, D) views
    q = q[:, :, extra:]  # the last T positions query all T + extra keys
    out, cache = attention_blocked_forward(q, k, v, block=block)
    dout = normal(1, out.shape)
    expected = attention_blocked_backward(dout, cache)
    buf = np.full((B, T + extra, 3, H, D), 5.0)
    views = (buf[:, extra:, 0].transpose(0, 2, 1, 3), buf[:, :, 1].transpose(0, 2, 1, 3),
             buf[:, :, 2].transpose(0, 2, 1, 3))
    got = attention_blocked_backward(dout, cache, out=views)
    assert all(g is w for g, w in zip(got, views))
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-13)
    assert (buf[:, :extra, 0] == 5.0).all()  # nothing written outside the views
    with pytest.raises(ValueError, match="out must be three arrays"):
        attention_blocked_backward(dout, cache, out=views[:2])
    with pytest.raises(ValueError, match="out must be three arrays"):
        attention_blocked_backward(dout, cache, out=(views[0].astype(np.float32),) + views[1:])
