"""Grouped-query attention in the three attention ops (k and v with Hk heads, Hk dividing q's H): the numbers of
multi-head attention on k and v repeated per group, the shared heads' gradients summed over their groups, the
same in query blocks and in flash tiles, a KV cache's offset too; torch's SDPA (enable_gqa) as the oracle."""

import numpy as np
import pytest

from scratchllm.ops import (attention_backward, attention_blocked_backward, attention_blocked_forward,
                            attention_forward, flash_attention_backward, flash_attention_forward)
from tests.helpers import assert_gradcheck, normal, random_dout, torch_oracle

FORMS = {
    "whole": (attention_forward, attention_backward),
    "blocked": (lambda q, k, v: attention_blocked_forward(q, k, v, block=2), attention_blocked_backward),
    "flash": (lambda q, k, v: flash_attention_forward(q, k, v, block_q=2, block_k=3), flash_attention_backward),
}


def inputs(H, Hk, T=5, Tk=5, seed=0):
    return normal(seed, (2, H, T, 4)), normal(seed + 1, (2, Hk, Tk, 4)), normal(seed + 2, (2, Hk, Tk, 4))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("H, Hk, Tk", [(4, 2, 5), (6, 3, 8), (3, 1, 5)])
def test_it_is_multi_head_attention_on_repeated_heads_and_the_gradients_sum(form, H, Hk, Tk):
    forward, backward = FORMS[form]
    q, k, v = inputs(H, Hk, Tk=Tk)
    G = H // Hk
    kr, vr = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)  # head h reads head h // G
    out, cache = forward(q, k, v)
    out_mh, cache_mh = attention_forward(q, kr, vr)
    np.testing.assert_allclose(out, out_mh, rtol=1e-12, atol=1e-14)
    dout = random_dout(out)
    dq, dk, dv = backward(dout, cache)
    dq_mh, dkr, dvr = attention_backward(dout, cache_mh)
    assert dk.shape == k.shape and dv.shape == v.shape
    np.testing.assert_allclose(dq, dq_mh, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dk, dkr.reshape(2, Hk, G, Tk, 4).sum(axis=2), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dv, dvr.reshape(2, Hk, G, Tk, 4).sum(axis=2), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("form", FORMS)
def test_gradcheck(form):
    forward, backward = FORMS[form]
    assert_gradcheck(forward, backward, inputs(4, 2, T=3, Tk=6, seed=4))


def test_torch_sdpa_with_gqa_agrees():
    torch = pytest.importorskip("torch")
    torch_oracle(attention_forward, attention_backward, inputs(6, 2, seed=7),
                 lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                  enable_gqa=True))


@pytest.mark.parametrize("form", FORMS)
def test_heads_that_do_not_divide_are_refused(form):
    forward, _ = FORMS[form]
    with pytest.raises(ValueError, match=r"k and v must have shape \(B, Hk, Tk, D\).*Hk dividing H=4"):
        forward(*inputs(4, 3))
