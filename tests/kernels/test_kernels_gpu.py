"""The fused CUDA kernels (scratchllm/kernels/) on a GPU: marked ``gpu``, skipped with the reason where no GPU
is usable. Each kernel against its NumPy op, forward and backward; gradcheck on CuPy; the fused optimizers
against the NumPy ones; a whole GPT step on CuPy against NumPy; and that a CuPy training step never waits for
the device. (What runs without a GPU: test_kernels.py.)"""

from __future__ import annotations

import importlib
import time

import numpy as np
import pytest

from scratchllm import kernels
from scratchllm.backend import to_numpy
from scratchllm.kernels.dispatch import dispatched
from tests.kernels.test_kernels import SPIN_SOURCE  # the device spin kernel (its nvcc compile test is there)


def _cupy():
    import cupy

    return cupy


def close(actual, expected, rtol, err_msg=""):
    """Normwise comparison: |a - e| <= rtol * (|e| + max|e|) elementwise."""
    actual, expected = to_numpy(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape, err_msg)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=err_msg)


RTOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


def _normal(seed, shape, dtype, scale=1.0):
    return np.asarray(scale * np.random.default_rng(seed).standard_normal(shape), dtype=dtype)  # 0-d: an array


@pytest.fixture
def kernels_on(monkeypatch):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    assert kernels.enabled(), kernels.status()[1]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (2, 7, 33), (4, 100), (64, 769), (1, 1, 1024), (3000, 3)])
def test_layernorm_kernel_matches_numpy(kernels_on, shape, dtype):
    cp, C = _cupy(), shape[-1]
    x = _normal(0, shape, dtype, 2.0) + _normal(9, shape[:-1] + (1,), dtype)
    w, b = 1 + _normal(1, (C,), dtype, 0.3), _normal(2, (C,), dtype)
    dout = _normal(3, shape, dtype)
    from scratchllm.ops import layernorm_backward, layernorm_forward

    out, cache = layernorm_forward(x, w, b)
    grads = layernorm_backward(dout, cache)
    k_out, k_cache = kernels.layernorm_forward(cp.asarray(x), cp.asarray(w), cp.asarray(b))
    k_grads = kernels.layernorm_backward(cp.asarray(dout), k_cache)
    close(k_out, out, RTOL[dtype], "out")
    for name, a, e in zip(("norm", "rstd"), k_cache, cache):
        close(a, e, RTOL[dtype], name)
    for name, a, e in zip(("dx", "dw", "db"), k_grads, grads):
        close(a, e, 10 * RTOL[dtype], name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((1,), -1), ((5,), 0), ((2, 3, 7), -1), ((2, 3, 7), 1), ((4, 1000), -1),
                                        ((3, 50257), -1), ((6, 1), -1)])
def test_softmax_kernel_matches_numpy(kernels_on, shape, axis, dtype):
    cp = _cupy()
    from scratchllm.ops import softmax_backward, softmax_forward

    x, dout = _normal(0, shape, dtype, 3.0), _normal(1, shape, dtype)
    y, cache = softmax_forward(x, axis)
    (dx,) = softmax_backward(dout, cache)
    k_y, k_cache = kernels.softmax_forward(cp.asarray(x), axis)
    (k_dx,) = kernels.softmax_backward(cp.asarray(dout), k_cache)
    close(k_y, y, RTOL[dtype], "y")
    close(k_dx, dx, 10 * RTOL[dtype], "dx")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_shape,Tk,causal", [((1, 1, 1, 4), 1, True), ((2, 3, 5, 8), 5, True),
                                               ((2, 2, 37, 16), 37, True), ((1, 2, 3, 4), 7, True),
                                               ((2, 3, 5, 8), 5, False), ((1, 1, 130, 8), 130, True)])
def test_attention_with_the_causal_softmax_kernel_matches_numpy(kernels_on, q_shape, Tk, causal, dtype):
    cp = _cupy()
    from scratchllm.ops import (attention_backward, attention_blocked_backward, attention_blocked_forward,
                                attention_forward)

    B, H, T, D = q_shape
    q, k, v = _normal(0, q_shape, dtype), _normal(1, (B, H, Tk, D), dtype), _normal(2, (B, H, Tk, D), dtype)
    dout = _normal(3, q_shape, dtype)
    cases = [(lambda *a: attention_forward(*a, causal=causal), attention_backward)]
    if causal:
        cases.append((lambda *a: attention_blocked_forward(*a, block=16), attention_blocked_backward))
    for fwd, bwd in cases:
        out, cache = fwd(q, k, v)
        grads = bwd(dout, cache)
        k_out, k_cache = fwd(cp.asarray(q), cp.asarray(k), cp.asarray(v))
        k_grads = bwd(cp.asarray(dout), k_cache)
        close(k_out, out, 10 * RTOL[dtype], "out")
        for name, a, e in zip(("dq", "dk", "dv"), k_grads, grads):
            close(a, e, 100 * RTOL[dtype], name)


@pytest.mark.gpu
def test_causal_softmax_kernel_masks_exactly(kernels_on):
    cp = _cupy()
    att = cp.asarray(_normal(0, (2, 3, 4, 6), np.float32))
    p, _ = kernels.scaled_causal_softmax_forward(att, 0.5)
    p = to_numpy(p)
    i, j = np.arange(4)[:, None] + 2, np.arange(6)[None, :]
    assert (p[..., j > i] == 0).all() and (p[..., j <= i] > 0).all()
    np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("shape", [(), (7,), (3, 33), (2, 5, 3072)])
def test_gelu_kernel_matches_numpy(kernels_on, shape, approximate, dtype):
    cp = _cupy()
    from scratchllm.ops import gelu_backward, gelu_forward

    x, dout = _normal(0, shape, dtype, 3.0), _normal(1, shape, dtype)
    out, cache = gelu_forward(x, approximate)
    (dx,) = gelu_backward(dout, cache)
    k_out, k_cache = kernels.gelu_forward(cp.asarray(x), approximate)
    (k_dx,) = kernels.gelu_backward(cp.asarray(dout), k_cache)
    close(k_out, out, RTOL[dtype], "out")
    close(k_cache[1], cache[1], RTOL[dtype], "cached tanh(u) / Phi(x)")
    close(k_dx, dx, RTOL[dtype], "dx")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,V,ignored", [((2, 4), 5, [(0, 0), (1, 3)]), ((1, 1), 7, []), ((1, 1), 1, []),
                                             ((3,), 50257, [(1,)]), ((2, 2), 5, "all"), ((8, 64), 1000, [(2, 5)])])
@pytest.mark.parametrize("dout", [1.0, 2.5, "device"])
def test_cross_entropy_kernel_matches_numpy(monkeypatch, kernels_on, shape, V, ignored, dout, dtype):
    cp = _cupy()
    from scratchllm.ops import cross_entropy_backward, cross_entropy_forward

    logits = _normal(0, shape + (V,), dtype, 2.0)
    targets = np.random.default_rng(1).integers(0, V, size=shape)
    if ignored == "all":
        targets[...] = -1
    for idx in ignored if ignored != "all" else ():
        targets[idx] = -1
    d_host = 0.75 if dout == "device" else dout
    d_dev = cp.asarray(d_host, dtype=dtype) if dout == "device" else dout
    loss, cache = cross_entropy_forward(logits, targets)
    dlogits, _ = cross_entropy_backward(d_host, cache)
    k_loss, k_cache = kernels.cross_entropy_forward(cp.asarray(logits), cp.asarray(targets))
    k_dlogits, none = kernels.cross_entropy_backward(d_dev, k_cache)
    assert k_loss.dtype == dtype and k_loss.shape == () and none is None
    close(k_loss, loss, RTOL[dtype], "loss")
    close(k_dlogits, dlogits, RTOL[dtype], "dlogits")
    # the caches are interchangeable: kernel forward -> xp backward, xp forward (on CuPy) -> kernel backward
    monkeypatch.setenv(kernels.ENV_VAR, "0")
    x_loss, x_cache = cross_entropy_forward(cp.asarray(logits), cp.asarray(targets))
    x_dlogits, _ = cross_entropy_backward(d_dev, k_cache)
    monkeypatch.delenv(kernels.ENV_VAR)
    close(x_loss, loss, RTOL[dtype], "xp loss on CuPy")
    close(x_dlogits, dlogits, RTOL[dtype], "xp backward of the kernel cache")
    close(kernels.cross_entropy_backward(d_dev, x_cache)[0], dlogits, RTOL[dtype], "kernel backward, xp cache")


@pytest.mark.gpu
@pytest.mark.parametrize("use_kernels", ["1", "0"])
def test_bad_target_on_cupy_gives_nan_not_a_crash(monkeypatch, use_kernels):
    cp = _cupy()
    monkeypatch.setenv(kernels.ENV_VAR, use_kernels)
    from scratchllm.ops import cross_entropy_backward, cross_entropy_forward

    logits = cp.asarray(_normal(0, (2, 3, 5), np.float32))
    targets = cp.asarray([[1, 5, -1], [0, -7, 2]])
    loss, cache = cross_entropy_forward(logits, targets)
    dlogits, _ = cross_entropy_backward(1.0, cache)
    assert np.isnan(float(loss))
    assert dlogits.shape == logits.shape
    cp.cuda.Device().synchronize()  # no illegal memory access was queued


@pytest.mark.gpu
@pytest.mark.parametrize("name,op_name", [("layernorm_forward", "layernorm"), ("softmax_forward", "softmax"),
                                          ("gelu_forward", "gelu"), ("cross_entropy_forward", "cross_entropy"),
                                          ("scaled_causal_softmax_forward", "attention")])
def test_ops_dispatch_cupy_arrays_to_the_kernels_unless_turned_off(monkeypatch, name, op_name):
    cp = _cupy()
    from scratchllm.ops import OPS

    op = OPS[op_name]
    forward = dispatched(op.forward)  # registered implementations run through the dispatch; the rest in the op
    inputs = op.make_inputs(dtype="float32", xp=cp)
    calls = []
    real = getattr(kernels, name)
    spy = lambda *a, **k: calls.append(1) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(kernels, name, spy)  # the package's name ...
    monkeypatch.setattr(importlib.import_module(real.__module__), name, spy)  # ... and the one implementations call
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    forward(*inputs)
    assert calls, f"{op_name} did not use kernels.{name}"
    calls.clear()
    monkeypatch.setenv(kernels.ENV_VAR, "0")
    forward(*inputs)
    assert not calls
    forward(*op.make_inputs(dtype="float32"))  # NumPy arrays never go to the CUDA kernels
    assert not calls


@pytest.mark.gpu
@pytest.mark.parametrize("use_kernels", ["1", "0"])
def test_gradcheck_on_cupy_directional(monkeypatch, use_kernels):
    cp = _cupy()
    monkeypatch.setenv(kernels.ENV_VAR, use_kernels)
    from scratchllm.gradcheck import gradcheck
    from scratchllm.ops import OPS

    for name, op in OPS.items():
        for forward, backward in ((op.forward, op.backward), (dispatched(op.forward), dispatched(op.backward))):
            report = gradcheck(forward, backward, op.make_inputs(xp=cp), mode="directional", raise_on_fail=False)
            assert report.ok, f"{name}: {report}"


# --- fused optimizers ----------------------------------------------------------------------------------------
OPTIMIZERS = [
    ("AdamW", dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)),
    ("Adam", dict(lr=1e-2, weight_decay=0.01)),
    ("Adam", dict(lr=1e-2, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=3e-3, amsgrad=True)),
    ("Adagrad", dict(lr=1e-2, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1)),
    ("Adagrad", dict(lr=1e-2, maximize=True)),
    ("SGD", dict(lr=1e-2, momentum=0.9, dampening=0.1)),  # flat, not fused
]


def _shapes():
    return {"w1": (7, 13), "b1": (13,), "w2": (13, 3), "b2": (3,), "s": ()}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls_name,kwargs", OPTIMIZERS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(OPTIMIZERS)])
def test_fused_optimizers_match_numpy(monkeypatch, kernels_on, cls_name, kwargs, dtype):
    cp = _cupy()
    from scratchllm import optim as O

    cls = getattr(O, cls_name)
    host = {n: _normal(i, s, dtype) for i, (n, s) in enumerate(_shapes().items())}
    order = sorted(host, key=lambda n: host[n].ndim < 2)  # >= 2-D first, as GPT: each decay group is one stretch
    _, dev = O.flatten_params({n: cp.asarray(host[n]) for n in order})
    groups = lambda ps: O.decay_groups(ps, 0.05) if "weight_decay" not in kwargs else [ps]  # noqa: E731
    ref, opt = cls(groups({n: a.copy() for n, a in host.items()}), **kwargs), cls(groups(dev), **kwargs)
    launches = []
    for fused in ("adam_step", "adagrad_step"):
        real = getattr(kernels, fused)
        monkeypatch.setattr(kernels, fused, lambda *a, real=real, **k: launches.append(1) or real(*a, **k))
    ref_params = {n: p for g in ref.param_groups for n, p in g["params"].items()}
    for step in range(6):
        grads = {n: _normal(100 + step * 10 + i, s, dtype) for i, (n, s) in enumerate(_shapes().items())}
        ref.step(grads)
        _, flat_grads = O.flatten_params({n: cp.asarray(grads[n]) for n in order})  # laid out like the params
        opt.step(flat_grads)
        if step == 2:  # a state dict round trip through the host, as a checkpoint does
            sd = opt.state_dict()
            opt.load_state_dict({**sd, "state": {k: to_numpy(v) for k, v in sd["state"].items()}})
    for n in host:
        close(dev[n], ref_params[n], 100 * RTOL[dtype], n)
    for k, v in ref.state_dict()["state"].items():
        close(opt.state_dict()["state"][k], v, 100 * RTOL[dtype], k)
    fused_expected = cls_name != "SGD"
    assert bool(launches) == fused_expected
    if fused_expected:  # one launch per group per step
        assert len(launches) == 6 * len(opt.param_groups)


# --- the whole model -----------------------------------------------------------------------------------------
def _tiny_cfg(n_layer=2):
    from scratchllm.model import GPTConfig

    return GPTConfig(vocab_size=37, block_size=16, n_layer=n_layer, n_head=2, n_embd=24)  # C, V: no powers of 2


def _batch(cfg, B=3, T=16, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cfg.vocab_size, size=(B, T))
    targets = rng.integers(0, cfg.vocab_size, size=(B, T))
    targets[0, :3] = -1
    return idx, targets


@pytest.mark.gpu
@pytest.mark.parametrize("use_kernels", ["1", "0"])
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-4), ("float64", 1e-10)])
def test_gpt_step_on_cupy_matches_numpy(monkeypatch, use_kernels, dtype, rtol):
    """Forward, backward, clip_grad_norm and AdamW on CuPy against NumPy, two steps. The device optimizer
    is fed the host's gradients (laid out flat like the device model's, so it takes the fused path): Adam
    moves a weight by about lr whatever the size of its gradient, so a gradient that is 0 up to rounding
    would otherwise make the trajectories differ by lr for reasons that say nothing about the code."""
    cp = _cupy()
    monkeypatch.setenv(kernels.ENV_VAR, use_kernels)
    from scratchllm.model import GPT
    from scratchllm.optim import AdamW, clip_grad_norm, decay_groups, flatten_params

    cfg = _tiny_cfg()
    host, dev = GPT(cfg, seed=3, dtype=dtype, backend="numpy"), GPT(cfg, seed=3, dtype=dtype, backend="cupy")
    opts = [AdamW(decay_groups(m.params, 0.1), lr=1e-3) for m in (host, dev)]
    for step in range(2):
        idx, targets = _batch(cfg, seed=step)
        (lh, loss_h, ch), (ld, loss_d, cd) = host.forward(idx, targets), dev.forward(idx, targets)
        close(ld, lh, rtol, "logits")
        close(loss_d, loss_h, rtol, "loss")
        gh, gd = host.backward(ch), dev.backward(cd)
        assert list(gd) == list(gh)
        for n in gh:
            close(gd[n], gh[n], 10 * rtol, f"grad {n}")
        norm_h, norm_d = clip_grad_norm(gh, 1.0), clip_grad_norm(gd, 1.0)
        assert float(norm_d) == pytest.approx(norm_h, rel=10 * rtol)
        for n in gh:
            close(gd[n], gh[n], 10 * rtol, f"clipped grad {n}")
        _, g_same = flatten_params({n: cp.asarray(gh[n]) for n in dev._flat_order})
        opts[0].step(gh)
        opts[1].step(g_same)
        for n in host.params:
            close(dev.params[n], host.params[n], 10 * rtol, f"param {n} after step {step}")


@pytest.mark.gpu
def test_gpt_on_cupy_keeps_params_and_grads_flat():
    from scratchllm.model import GPT
    from scratchllm.kernels.flat import flat_span as _flat_span
    from scratchllm.optim import decay_groups

    model = GPT(_tiny_cfg(), backend="cupy")
    for group in decay_groups(model.params, 0.1):  # each decay group is one stretch: one fused update
        assert _flat_span(list(group["params"].values())) is not None
    grads = model.backward(model.forward(*_batch(model.cfg))[2])
    assert _flat_span(list(grads.values())) is not None
    assert _flat_span(list(grads.values()))[1] == _flat_span(list(model.params.values()))[1]


@pytest.mark.gpu
@pytest.mark.parametrize("use_kernels", ["1", "0"])
def test_a_cupy_training_step_never_waits_for_the_device(monkeypatch, use_kernels):
    """Queue a kernel that keeps the GPU busy for 2 s, then run a whole training step (forward, backward,
    clip_grad_norm, AdamW): if anything in it read a value back to the host (float(), bool(), .get(), a
    range check), the host would wait for the busy kernel. The step must return long before it ends."""
    cp = _cupy()
    monkeypatch.setenv(kernels.ENV_VAR, use_kernels)
    from scratchllm.model import GPT
    from scratchllm.optim import AdamW, clip_grad_norm, decay_groups

    model = GPT(_tiny_cfg(n_layer=1), backend="cupy")  # few launches: a full launch queue would block too
    opt = AdamW(decay_groups(model.params, 0.1), lr=1e-3)
    idx, targets = (cp.asarray(a) for a in _batch(model.cfg))  # the trainer's batches, already on the device

    def step():
        _, loss, cache = model.forward(idx, targets)
        grads = model.backward(cache)
        clip_grad_norm(grads, 1.0)
        opt.step(grads)
        return loss

    spin = cp.RawKernel(SPIN_SOURCE, "scratchllm_spin")
    busy_s = 2.0
    step()  # warm up: compiles the kernels, fills the memory pool
    cp.cuda.Device().synchronize()
    spin((1,), (1,), (np.int64(busy_s * 1e9),))
    t0 = time.perf_counter()
    loss = step()
    host_s = time.perf_counter() - t0
    still_busy = not cp.cuda.get_current_stream().done
    cp.cuda.Device().synchronize()
    assert still_busy and host_s < busy_s / 2, (
        f"the step took {host_s:.2f} s on the host while the GPU was busy for {busy_s} s: it synchronized")
    # the detector works: reading the loss does wait
    spin((1,), (1,), (np.int64(busy_s * 1e9),))
    t0 = time.perf_counter()
    assert np.isfinite(float(loss))
    assert time.perf_counter() - t0 > busy_s / 2
