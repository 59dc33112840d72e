"""Helpers shared by the tests: seeded inputs, a gradcheck assertion and a PyTorch autograd oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import strategies as st

from scratchllm.gradcheck import gradcheck

MAX_REL_ERR = 1e-7  # the project's bar for float64 gradchecks

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def normal(seed, shape, dtype=np.float64, scale=1.0):
    """Well-conditioned values by construction: seeded standard normals times `scale`."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def assert_gradcheck(forward, backward, inputs, mode="full", **kw):
    """gradcheck must pass at the project's bar: max abs err <= 1e-10 + 1e-7 * (the gradient's scale).

    The plain relative error is not asserted alone: a gradient that is zero up to round-off (layernorm
    with C = 2) has a meaningless relative error, which the absolute floor absorbs.
    """
    report = gradcheck(forward, backward, inputs, mode=mode, rtol=MAX_REL_ERR, **kw)
    assert report.ok, str(report)
    return report


def random_dout(out, seed=123):
    return np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)


def torch_oracle(forward, backward, inputs, torch_fn, rtol=1e-10, atol=1e-12, seed=123):
    """Compare our forward and backward with PyTorch autograd in float64.

    `torch_fn(*tensors)` computes the same output from torch tensors (integer inputs are passed as int64
    tensors without grad). The backward is compared for L = sum(out * dout) with a random dout.
    """
    torch = pytest.importorskip("torch")
    out, cache = forward(*inputs)
    dout = random_dout(np.asarray(out), seed)
    grads = backward(dout, cache)
    tensors = [torch.tensor(a, requires_grad=a.dtype.kind == "f") if a.dtype.kind == "f"
               else torch.tensor(a, dtype=torch.int64) for a in inputs]
    t_out = torch_fn(*tensors)
    (t_out * torch.tensor(dout)).sum().backward()
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=rtol, atol=atol)
    for a, t, g in zip(inputs, tensors, grads):
        if a.dtype.kind == "f":
            np.testing.assert_allclose(g, t.grad.numpy(), rtol=rtol, atol=atol)
        else:
            assert g is None
    return out, grads
