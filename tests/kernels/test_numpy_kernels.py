"""The pure-NumPy implementations (kernels/numpy/): the parts of them that the registry test
(tests/kernels/test_registry.py) does not reach on its own."""

import math

import numpy as np
import pytest

from scratchllm import ops
from scratchllm.kernels import dispatch
from scratchllm.kernels.numpy import embedding as numpy_embedding
from scratchllm.kernels.numpy import gelu
from scratchllm.kernels.numpy.gelu import _normal_cdf_float32
from tests.helpers import normal


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


def test_large_lookups_gathered_in_pieces_equal_plain_indexing(monkeypatch):
    monkeypatch.setattr(numpy_embedding, "GATHER_PARALLEL_MIN", 1)
    monkeypatch.setattr("scratchllm.kernels.threads.PARALLEL_MIN", 1)  # and on every thread, in pieces of 2 rows
    monkeypatch.setattr("scratchllm.kernels.threads.PIECE", 8)
    rng = np.random.default_rng(0)
    table = rng.standard_normal((11, 8)).astype(np.float32)
    idx = rng.integers(0, 11, (3, 7))
    out, _ = dispatch.embedding_forward(idx, table)
    np.testing.assert_array_equal(out, table[idx])
    out, _ = dispatch.embedding_forward(idx, table[:, ::2])  # a strided table
    np.testing.assert_array_equal(out, table[:, ::2][idx])
    with pytest.raises(ValueError, match="outside"):
        dispatch.embedding_forward(np.array([[0, 11]]), table)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dw_out_receives_dw_in_place(dtype):
    x, w, b = normal(0, (2, 3, 4), dtype), normal(1, (4, 5), dtype), normal(2, (5,), dtype)
    _, cache = dispatch.linear_forward(x, w, b)
    dout = normal(3, (2, 3, 5), dtype)
    dx, dw, db = dispatch.linear_backward(dout, cache)
    flat = np.full(26, 7.0, dtype)  # a flat buffer with room around the view, as GPT's gradients
    view = flat[3:23].reshape(4, 5)
    dx2, dw2, db2 = dispatch.linear_backward(dout, cache, dw_out=view)
    assert dw2 is view
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(dx2, dx)
    np.testing.assert_array_equal(db2, db)
    assert (flat[:3] == 7).all() and (flat[23:] == 7).all()  # nothing written outside the view
    with pytest.raises(ValueError, match=r"dw_out must be an array of shape \(4, 5\)"):
        dispatch.linear_backward(dout, cache, dw_out=np.zeros((5, 4), dtype))
    with pytest.raises(ValueError, match="dw_out must be an array"):
        dispatch.linear_backward(dout, cache, dw_out=np.zeros((4, 5), np.float16))


@pytest.mark.parametrize("T, extra, block", [(256, 0, 64), (300, 5, 64), (520, 3, 128)])
def test_long_blocked_attention_equals_the_whole_matrix(T, extra, block):
    """The blocked attention GPT runs (the CPU implementation at its block sizes) against the textbook's whole
    T x Tk matrix, with more keys than queries too."""
    q = normal(0, (1, 2, T, 4))
    k, v = normal(1, (1, 2, T + extra, 4)), normal(2, (1, 2, T + extra, 4))
    dout = normal(3, q.shape)
    out, cache = dispatch.attention_blocked_forward(q, k, v, block=block)
    grads = dispatch.attention_blocked_backward(dout, cache)
    ref, ref_cache = ops.attention_forward(q, k, v)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)
    for g, r in zip(grads, ops.attention_backward(dout, ref_cache)):
        np.testing.assert_allclose(g, r, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("T, extra, block", [(9, 0, 4), (9, 3, 2), (6, 0, 6)])
def test_blocked_attention_writes_its_gradients_into_out_views(T, extra, block):
    """``out``: dq, dk, dv written into given arrays of any layout (GPT's: the thirds of a (B, T, 3, H, D)
    array), the same numbers as new arrays; a wrong shape or dtype names the argument."""
    B, H, D = 2, 3, 4
    qkv = normal(0, (B, T + extra, 3 * H * D))
    q, k, v = qkv.reshape(B, T + extra, 3, H, D).transpose(2, 0, 3, 1, 4)  # (B, H, T + extra, D) views
    q = q[:, :, extra:]  # the last T positions query all T + extra keys
    out, cache = dispatch.attention_blocked_forward(q, k, v, block=block)
    dout = normal(1, out.shape)
    expected = dispatch.attention_blocked_backward(dout, cache)
    buf = np.full((B, T + extra, 3, H, D), 5.0)
    views = (buf[:, extra:, 0].transpose(0, 2, 1, 3), buf[:, :, 1].transpose(0, 2, 1, 3),
             buf[:, :, 2].transpose(0, 2, 1, 3))
    got = dispatch.attention_blocked_backward(dout, cache, out=views)
    assert all(g is w for g, w in zip(got, views))
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-13)
    assert (buf[:, :extra, 0] == 5.0).all()  # nothing written outside the views
    with pytest.raises(ValueError, match="out must be three arrays"):
        dispatch.attention_blocked_backward(dout, cache, out=views[:2])
    with pytest.raises(ValueError, match="out must be three arrays"):
        dispatch.attention_blocked_backward(dout, cache, out=(views[0].astype(np.float32),) + views[1:])
