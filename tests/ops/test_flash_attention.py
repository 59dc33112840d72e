"""Flash attention equals the whole-matrix attention (values and gradients) for any tile sizes, passes gradcheck,
agrees with PyTorch's scaled_dot_product_attention, and keeps O(T) memory."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.ops import (attention_backward, attention_forward, flash_attention_backward,
                            flash_attention_forward)
from tests.helpers import assert_gradcheck, normal, seeds, torch_oracle


@given(seed=seeds, B=st.integers(1, 2), H=st.integers(1, 2), T=st.integers(1, 9), extra=st.integers(0, 4),
       D=st.integers(1, 5), block_q=st.integers(1, 10), block_k=st.integers(1, 10), causal=st.booleans())
def test_equals_the_whole_matrix_attention(seed, B, H, T, extra, D, block_q, block_k, causal):
    q = normal(seed, (B, H, T, D))
    k, v = normal(seed + 1, (B, H, T + extra, D)), normal(seed + 2, (B, H, T + extra, D))
    ref, ref_cache = attention_forward(q, k, v, causal=causal)
    out, cache = flash_attention_forward(q, k, v, causal, block_q, block_k)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)
    dout = normal(seed + 3, out.shape)
    for a, b in zip(flash_attention_backward(dout, cache), attention_backward(dout, ref_cache)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


@given(seed=seeds, T=st.integers(1, 6), extra=st.integers(0, 2), block_q=st.integers(1, 4),
       block_k=st.integers(1, 4), causal=st.booleans())
def test_gradcheck_property(seed, T, extra, block_q, block_k, causal):
    q = normal(seed, (1, 2, T, 3))
    k, v = normal(seed + 1, (1, 2, T + extra, 3)), normal(seed + 2, (1, 2, T + extra, 3))
    assert_gradcheck(lambda *a: flash_attention_forward(*a, causal, block_q, block_k), flash_attention_backward,
                     (q, k, v))


def test_gradcheck_directional_at_a_larger_size():
    q, k, v = (normal(i, (2, 3, 37, 8)) for i in range(3))
    assert_gradcheck(lambda *a: flash_attention_forward(*a, True, 8, 16), flash_attention_backward, (q, k, v),
                     mode="directional")


@pytest.mark.parametrize("causal, extra", [(True, 0), (True, 5), (False, 0), (False, 3)])
def test_torch_scaled_dot_product_attention_oracle(causal, extra):
    torch = pytest.importorskip("torch")
    q = normal(0, (2, 3, 11, 4))
    k, v = normal(1, (2, 3, 11 + extra, 4)), normal(2, (2, 3, 11 + extra, 4))

    def sdpa(q, k, v):
        mask = None
        if causal:  # queries are the last T of Tk positions: torch's is_causal aligns them to the first
            T, Tk = q.shape[2], k.shape[2]
            mask = torch.ones(T, Tk, dtype=torch.bool).tril(diagonal=Tk - T)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch_oracle(lambda *a: flash_attention_forward(*a, causal, 4, 3), flash_attention_backward, (q, k, v), sdpa)


def test_float32_stays_float32_and_matches_float64():
    q, k, v = (normal(i, (2, 3, 40, 8), np.float32) for i in range(3))
    out, cache = flash_attention_forward(q, k, v, block_q=16, block_k=8)
    assert out.dtype == np.float32 and cache[4].dtype == np.float32
    ref, _ = attention_forward(*(a.astype(np.float64) for a in (q, k, v)))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert all(g.dtype == np.float32 for g in flash_attention_backward(normal(4, out.shape, np.float32), cache))


def test_bad_arguments_name_themselves():
    q, k, v = (normal(i, (1, 1, 4, 2)) for i in range(3))
    for kw, name in ((dict(block_q=0), "block_q"), (dict(block_k=2.5), "block_k"), (dict(block_q=True), "block_q")):
        with pytest.raises(ValueError, match=f"{name} must be an int >= 1"):
            flash_attention_forward(q, k, v, **kw)
    with pytest.raises(ValueError, match="at least as many keys"):
        flash_attention_forward(q, k[:, :, :2], v[:, :, :2])
    out, cache = flash_attention_forward(q, k, v)
    with pytest.raises(ValueError, match="dout"):
        flash_attention_backward(np.ones((1, 1, 3, 2)), cache)


def _peak_bytes(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_grows_with_t_not_t_squared():
    """tracemalloc counts NumPy's allocations: the forward + backward's peak beyond the inputs, at B1 H1 D64."""
    def peaks(T):
        q, k, v, dout = (normal(i, (1, 1, T, 64)) for i in range(4))

        def flash():
            out, cache = flash_attention_forward(q, k, v)
            flash_attention_backward(dout, cache)

        def whole():
            out, cache = attention_forward(q, k, v)
            attention_backward(dout, cache)
        return _peak_bytes(flash), _peak_bytes(whole)
    small, large = peaks(512), peaks(2048)
    assert large[0] / small[0] < 6  # 4x the rows: about 4x the memory (O(T)), not 16x
    assert large[1] / small[1] > 10  # the whole matrix: about 16x
    assert large[0] < large[1] / 10


@pytest.mark.parametrize("dtype, size", [("float64", 30.0), ("float32", 10.0)])
def test_large_scores_stay_finite_and_exact(dtype, size):
    """Scores of about 1e3 (float64) and 1e2 (float32): exp overflows unless the running max is subtracted, a
    bug that is exact in exact arithmetic and that gradcheck and small inputs cannot see."""
    q = normal(0, (1, 2, 40, 4), dtype, size)
    k, v = normal(1, (1, 2, 40, 4), dtype, size), normal(2, (1, 2, 40, 4), dtype)
    assert float(np.abs(q @ k.swapaxes(-1, -2)).max()) / 2 > (500 if dtype == "float64" else 60)
    out, cache = flash_attention_forward(q, k, v, True, 8, 8)
    ref, ref_cache = attention_forward(q, k, v)
    assert np.isfinite(out).all() and np.isfinite(cache[4]).all()
    tol = 1e-10 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    dout = normal(3, out.shape, dtype)
    for a, b in zip(flash_attention_backward(dout, cache), attention_backward(dout, ref_cache)):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(np.abs(b).max()))
