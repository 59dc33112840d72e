"""Properties every op in the registry must have: gradcheck, dtypes, no mutation, float32 agreement."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scratchllm.gradcheck import gradcheck
from scratchllm.ops import OPS
from tests.helpers import MAX_REL_ERR, assert_gradcheck, random_dout

BASE_OPS = {"linear", "embedding", "layernorm", "gelu", "softmax", "attention", "cross_entropy"}


def test_registry_has_every_op_of_the_contract():
    assert BASE_OPS <= set(OPS)
    for name, op in OPS.items():
        assert op.name == name and callable(op.forward) and callable(op.backward)


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("mode", ["full", "directional", "sampled"])
def test_gradcheck_float64(name, mode):
    op = OPS[name]
    report = assert_gradcheck(op.forward, op.backward, op.make_inputs(seed=1), mode=mode)
    assert {r.name for r in report.inputs} == {n for n, a in zip(op.input_names, op.make_inputs())
                                               if a.dtype.kind == "f"}


@given(data=st.data())
@pytest.mark.parametrize("name", sorted(OPS))
def test_torch_agrees_on_drawn_values(name, data):
    """Every op against PyTorch autograd (no finite differences, so no noise floor) on float inputs whose values
    hypothesis draws: repeats, exact zeros, constant rows, +-6, at the registry's shapes. A failure shrinks to
    a small array. (Finite differences need well-spread inputs: at a constant layernorm row, whose function
    bends on the scale of sqrt(eps), the central difference itself is off by 7e-7 relative.)"""
    torch = pytest.importorskip("torch")
    from scratchllm.bench.torch_ref import TIMING_ONLY, TORCH_OPS

    if name in TIMING_ONLY:
        pytest.skip("random masks: torch draws its own")
    op = OPS[name]
    inputs = tuple(data.draw(hnp.arrays(np.float64, a.shape, elements=st.floats(-6, 6, allow_subnormal=False)),
                             label=n) if a.dtype.kind == "f" else a
                   for n, a in zip(op.input_names, op.make_inputs(seed=5)))
    out, cache = op.forward(*inputs)
    dout = data.draw(hnp.arrays(np.float64, np.shape(out), elements=st.floats(-3, 3)), label="dout")
    grads = op.backward(dout, cache)
    tensors = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in inputs]
    t_out = TORCH_OPS[name](*tensors)
    (t_out * torch.tensor(dout)).sum().backward()
    for got, want in [(out, t_out.detach().numpy())] + [(g, t.grad.numpy()) for g, t in zip(grads, tensors)
                                                        if t.requires_grad]:
        scale = max(float(np.abs(want).max()) if want.size else 0.0, 1.0)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-11 * scale)


@pytest.mark.parametrize("name", sorted(OPS))
def test_gradcheck_float32_inputs_checked_in_float64(name):
    op = OPS[name]
    report = gradcheck(op.forward, op.backward, op.make_inputs(dtype="float32", seed=2), mode="full")
    assert report.ok and report.max_rel_err <= MAX_REL_ERR


@pytest.mark.parametrize("name", sorted(OPS))
def test_dtype_preserved_and_float32_agrees_with_float64(name):
    op = OPS[name]
    x64 = op.make_inputs(dtype="float64", seed=3)
    x32 = op.make_inputs(dtype="float32", seed=3)
    out64, cache64 = op.forward(*x64)
    out32, cache32 = op.forward(*x32)
    assert out32.dtype == np.float32 and out64.dtype == np.float64
    dout = random_dout(out64)
    g64 = op.backward(dout, cache64)
    g32 = op.backward(dout.astype(np.float32), cache32)
    np.testing.assert_allclose(out32, out64, rtol=2e-5, atol=2e-6)
    for a, ga, gb in zip(x32, g32, g64):
        if a.dtype.kind != "f":
            assert ga is None and gb is None
            continue
        assert ga.dtype == np.float32 and ga.shape == a.shape
        np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=2e-5 * np.abs(gb).max())


@pytest.mark.parametrize("name", sorted(OPS))
def test_inputs_and_dout_are_not_mutated(name):
    op = OPS[name]
    inputs = op.make_inputs(seed=4)
    copies = [a.copy() for a in inputs]
    out, cache = op.forward(*inputs)
    dout = random_dout(out)
    dout_copy = dout.copy()
    op.backward(dout, cache)
    for a, c in zip(inputs, copies):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(dout, dout_copy)


@pytest.mark.parametrize("name", sorted(OPS))
def test_backward_rejects_a_wrong_dout_shape(name):
    op = OPS[name]
    out, cache = op.forward(*op.make_inputs())
    with pytest.raises(ValueError, match="dout"):
        op.backward(np.zeros(out.shape + (2,)), cache)


def test_make_inputs_rejects_unknown_sizes():
    with pytest.raises(ValueError, match="sizes"):
        OPS["layernorm"].make_inputs(sizes={"Q": 3})
