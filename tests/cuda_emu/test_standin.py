"""scratchllm's CuPy branches, run before any GPU does: every op of OPS and a whole GPT training step on the CuPy
stand-in (``standin.py``: arrays the code takes for CuPy's, our CUDA kernels on the host emulator, CuPy's
refusal of NumPy arrays), against NumPy; with the fused kernels on and off; and ``scratchllm train
--backend=cupy`` end to end. So a first ``--backend=cupy`` run on a GPU is not the first run of any line."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from scratchllm.kernels.dispatch import dispatched
from scratchllm.ops import OPS
from tests.cuda_emu import standin

pytestmark = pytest.mark.cuda_emu
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def cupy(monkeypatch):
    """The stand-in installed as cupy; the backend's and kernels' caches emptied before and after."""
    caches = standin.install(monkeypatch)
    import cupy

    yield cupy
    for c in caches:
        c.cache_clear()


def _run(op, inputs, dout):
    out, cache = dispatched(op.forward)(*inputs)
    return out, dispatched(op.backward)(dout, cache)


@pytest.mark.parametrize("kernels_on", [True, False], ids=["cuda-kernels", "cupy-textbook"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_on_the_cupy_path_equals_numpy(cupy, monkeypatch, name, kernels_on):
    if not kernels_on:
        monkeypatch.setenv("SCRATCHLLM_KERNELS", "0")
    op = OPS[name]
    host = op.make_inputs(op.default_sizes, dtype="float64", seed=0)
    ref_out, ref_cache = op.forward(*host)
    dout = np.random.default_rng(1).standard_normal(np.shape(ref_out))
    ref_grads = op.backward(dout, ref_cache)
    standin.calls.clear()
    out, grads = _run(op, tuple(cupy.asarray(a) for a in host), cupy.asarray(dout))
    assert type(out) is cupy.ndarray and all(g is None or type(g) is cupy.ndarray for g in grads)
    np.testing.assert_allclose(out.get(), ref_out, rtol=1e-12, atol=1e-14)
    for g, r, what in zip(grads, ref_grads, op.input_names):
        if r is None:
            assert g is None, what
        else:
            np.testing.assert_allclose(g.get(), r, rtol=1e-12, atol=1e-14, err_msg=what)
    launched = {k for k in standin.calls if k != "matmul"}
    from scratchllm import kernels

    has_cuda = "cuda" in kernels.implementations(op.family) and kernels.implementations(op.family)["cuda"].supports(
        *(cupy.asarray(a) for a in host), **getattr(op.forward, "keywords", {}))  # grouped heads: the textbook
    if kernels_on and has_cuda:
        assert launched, f"{name}: no CUDA kernel ran on the CuPy path"
    if not kernels_on:
        assert not launched, f"{name}: a CUDA kernel ran with SCRATCHLLM_KERNELS=0: {launched}"


def test_a_numpy_array_on_the_device_path_is_refused_as_cupy_would(cupy):
    with pytest.raises(TypeError, match="Unsupported type"):
        cupy.ones(3) + np.ones(3)
    with pytest.raises(TypeError, match="concatenate"):
        cupy.concatenate([cupy.ones(3), np.ones(3)])
    with pytest.raises(TypeError, match="Unsupported type"):
        np.concatenate([cupy.ones(3), np.ones(3)])
    with pytest.raises(TypeError, match="matmul"):
        cupy.matmul(np.ones((2, 2)), np.ones((2, 2)))
    assert type(cupy.asarray(np.ones(3))) is cupy.ndarray  # the host-to-device copy is how host data gets there
    assert type(cupy.ones(3).sum()) is cupy.ndarray  # a 0-d device array, not a host scalar


def test_attention_blocked_on_cupy_is_one_batched_product_per_block(cupy):
    """Defect 2: on CuPy each query block's products are one batched matmul over (B, H), not thousands."""
    from scratchllm.ops import attention_blocked_backward, attention_blocked_forward

    rng = np.random.default_rng(0)
    q, k, v = (cupy.asarray(rng.standard_normal((2, 3, 100, 8))) for _ in range(3))
    for kernels_on in ("1", "0"):
        os.environ["SCRATCHLLM_KERNELS"] = kernels_on
        try:
            standin.calls.clear()
            out, cache = dispatched(attention_blocked_forward)(q, k, v, block=32)
            forward = standin.calls["matmul"]
            standin.calls.clear()
            dispatched(attention_blocked_backward)(cupy.asarray(rng.standard_normal(out.shape)), cache)
            backward = standin.calls["matmul"]
        finally:
            del os.environ["SCRATCHLLM_KERNELS"]
        blocks = math.ceil(100 / 32)
        assert (forward, backward) == (2 * blocks, 4 * blocks), kernels_on


@pytest.mark.parametrize("kernels_on", [True, False], ids=["cuda-kernels", "cupy-textbook"])
def test_a_gpt_training_step_on_cupy_equals_numpy(cupy, monkeypatch, kernels_on):
    from scratchllm.models import GPT, GPTConfig
    from scratchllm.optim import AdamW, clip_grad_norm, decay_groups

    if not kernels_on:
        monkeypatch.setenv("SCRATCHLLM_KERNELS", "0")
    cfg = GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=8, dropout=0.1)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 37, (3, 16)), rng.integers(0, 37, (3, 16))
    targets[1, :5] = -1
    models = {b: GPT(cfg, seed=3, dtype="float64", backend=b) for b in ("numpy", "cupy")}
    assert type(models["cupy"].params["wte.weight"]) is cupy.ndarray
    opts = {b: AdamW(decay_groups(m.params, 0.1), lr=1e-2) for b, m in models.items()}
    standin.calls.clear()
    for step in range(3):
        losses, grads = {}, {}
        for b, m in models.items():
            _, loss, cache = m.forward(idx, targets)
            g = m.backward(cache)
            clip_grad_norm(g, 0.5)
            opts[b].step(g)
            losses[b], grads[b] = float(loss), g
        assert losses["cupy"] == pytest.approx(losses["numpy"], rel=1e-12), step
        for k, g in grads["numpy"].items():
            np.testing.assert_allclose(grads["cupy"][k].get(), g, rtol=1e-9, atol=1e-12, err_msg=k)
    for k, p in models["numpy"].params.items():
        np.testing.assert_allclose(models["cupy"].params[k].get(), p, rtol=1e-9, atol=1e-12, err_msg=k)
    kernels_ran = {k.split("<")[0] for k in standin.calls if k != "matmul"}
    if kernels_on:
        assert {"layernorm_forward", "scaled_causal_softmax_forward", "cross_entropy_forward",
                "scratchllm_gelu_tanh_forward", "scratchllm_adam_step"} <= kernels_ran, kernels_ran
    else:
        assert not kernels_ran


def test_a_llama_step_on_cupy_equals_numpy(cupy):
    """Llama's ops on CuPy arrays (rmsnorm, rope, swiglu and grouped attention in xp; the cross-entropy and linear
    kernels), its KV cache too: the NumPy model's numbers."""
    from scratchllm.models import Llama, LlamaConfig

    cfg = LlamaConfig(vocab_size=37, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=16)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 37, (2, 3, 12))
    models = {b: Llama(cfg, seed=3, dtype="float64", backend=b) for b in ("numpy", "cupy")}
    out = {}
    for b, m in models.items():
        logits, loss, cache = m.forward(idx, targets)
        kv = {}
        m.forward(idx[:, :8], kv_cache=kv)
        out[b] = (float(loss), m.backward(cache), m.forward(idx[:, 8:9], kv_cache=kv)[0])
    assert out["cupy"][0] == pytest.approx(out["numpy"][0], rel=1e-12)
    for k, g in out["numpy"][1].items():
        np.testing.assert_allclose(out["cupy"][1][k].get(), g, rtol=1e-9, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(out["cupy"][2].get(), out["numpy"][2], rtol=1e-10, atol=1e-12)


def test_scratchllm_train_backend_cupy_runs_end_to_end_on_the_standin(tmp_path):
    """``scratchllm train --backend=cupy`` as a user starts it, the stand-in installed before the CLI runs."""
    boot = ("import sys, pytest; from tests.cuda_emu import standin; mp = pytest.MonkeyPatch(); standin.install(mp); "
            "from scratchllm.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", boot, "train", "--backend=cupy", "--max_iters=3", "--eval_interval=2",
                           "--eval_iters=1", "--batch_size=2", "--block_size=16", "--n_layer=1", "--n_head=2",
                           "--n_embd=16", "--sample_tokens=10", f"--out_dir={tmp_path / 'run'}", "--progress=false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout + done.stderr
    assert "cupy" in text and (tmp_path / "run").exists(), text[-2000:]
