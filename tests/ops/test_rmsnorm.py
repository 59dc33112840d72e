"""rmsnorm (scratchllm/ops/rmsnorm.py): the formula, gradchecks on drawn shapes, PyTorch's rms_norm and Hugging
Face's LlamaRMSNorm as oracles, and clear errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.ops import rmsnorm_backward, rmsnorm_forward
from tests.helpers import assert_gradcheck, normal, random_dout, seeds, torch_oracle


def test_forward_matches_the_formula_row_by_row():
    x, w = normal(0, (3, 5), scale=2.0), normal(1, (5,))
    out, _ = rmsnorm_forward(x, w, eps=1e-6)
    for row, got in zip(x, out):
        np.testing.assert_allclose(got, row / np.sqrt(np.mean(row**2) + 1e-6) * w, rtol=1e-14)


def test_it_is_layernorm_without_the_mean_on_centred_rows():
    from scratchllm.ops import layernorm_forward

    x = normal(2, (4, 8))
    x -= x.mean(axis=-1, keepdims=True)  # zero-mean rows: RMSNorm and LayerNorm (no shift) agree
    w = normal(3, (8,))
    np.testing.assert_allclose(rmsnorm_forward(x, w, 1e-5)[0], layernorm_forward(x, w, np.zeros(8), 1e-5)[0],
                               rtol=1e-12, atol=1e-14)


@given(seed=seeds, lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), C=st.integers(1, 7))
def test_gradcheck_property(seed, lead, C):
    x = normal(seed, (*lead, C), scale=2.0) + 0.5
    w = normal(seed + 1, (C,))
    assert_gradcheck(rmsnorm_forward, rmsnorm_backward, (x, w))


def test_torch_oracles():
    torch = pytest.importorskip("torch")
    x, w = normal(4, (2, 3, 6), scale=2.0), normal(5, (6,))
    torch_oracle(rmsnorm_forward, rmsnorm_backward, (x, w),
                 lambda x, w: torch.nn.functional.rms_norm(x, (6,), w, 1e-6))
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    norm = llama.LlamaRMSNorm(6, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor(w))
    x32 = x.astype(np.float32)  # Hugging Face normalizes in float32 whatever the dtype
    want = norm.float()(torch.tensor(x32)).detach().numpy()
    np.testing.assert_allclose(rmsnorm_forward(x32, w.astype(np.float32))[0], want, rtol=1e-6, atol=1e-6)


def test_float32_stays_float32_and_inputs_are_not_mutated():
    x, w = normal(6, (2, 4), np.float32), normal(7, (4,), np.float32)
    x0, w0 = x.copy(), w.copy()
    out, cache = rmsnorm_forward(x, w)
    dout = random_dout(out)
    dx, dw = rmsnorm_backward(dout, cache)
    assert out.dtype == dx.dtype == dw.dtype == np.float32
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)


@pytest.mark.parametrize("args, error, match", [
    ((np.zeros((2, 4)), np.zeros(3)), ValueError, r"w must have shape \(4,\) to match x \(2, 4\); got \(3,\)"),
    ((np.zeros((2, 4)), np.zeros(4, np.float32)), TypeError, "w must have the same dtype as x"),
    ((np.zeros((2, 4), int), np.zeros(4)), TypeError, "x must have dtype float32 or float64"),
])
def test_bad_inputs_are_named(args, error, match):
    with pytest.raises(error, match=match):
        rmsnorm_forward(*args)
