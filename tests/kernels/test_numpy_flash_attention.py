"""The CPU flash attention (kernels/numpy/flash_attention.py) over several of its 128-row tiles: equal to the
textbook with any requested tiles, causal or not, Tk > T, float32 and float64, its cache in the textbook's
backward and the other way round."""

import numpy as np
import pytest

from scratchllm.kernels.numpy import flash_attention as fast
from scratchllm.ops import flash_attention_backward, flash_attention_forward
from tests.helpers import normal


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("T, Tk, causal, blocks", [(300, 300, True, (64, 64)), (257, 333, True, (128, 200)),
                                                   (200, 260, False, (32, 300)), (1, 1, True, (1, 1)),
                                                   (40, 2100, True, (64, 64))])  # BIG_TILE from 2048 keys
def test_equals_the_textbook_across_tiles(dtype, tol, T, Tk, causal, blocks):
    q = normal(0, (2, 3, T, 16), dtype)
    k, v = normal(1, (2, 3, Tk, 16), dtype), normal(2, (2, 3, Tk, 16), dtype)
    dout = normal(3, (2, 3, T, 16), dtype)
    out, cache = fast.flash_attention_forward(q, k, v, causal, *blocks)
    ref, ref_cache = flash_attention_forward(q, k, v, causal, *blocks)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(cache[4], ref_cache[4], rtol=tol, atol=tol)  # the log-sum-exp
    want = flash_attention_backward(dout, ref_cache)
    for grads in (fast.flash_attention_backward(dout, cache), fast.flash_attention_backward(dout, ref_cache),
                  flash_attention_backward(dout, cache)):
        for g, w in zip(grads, want):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol * 10)
