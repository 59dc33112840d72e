"""Llama (scratchllm/models/llama.py) against Hugging Face's LlamaForCausalLM in float64 (grouped, multi-query and
multi-head attention; tied and untied heads): logits and loss within 1e-12, every gradient within 1e-9; state
dicts cross unchanged both ways; a whole-model gradcheck; the KV cache; flash attention; data parallel."""

import numpy as np
import pytest

from scratchllm.models import Llama, LlamaConfig
from scratchllm.parallel import DataParallel
from tests.test_model import model_gradcheck

CASES = {"gqa untied": dict(Hk=2, tie=False), "mqa tied": dict(Hk=1, tie=True), "mha untied": dict(Hk=4, tie=False),
         "gqa tied eps 1e-5": dict(Hk=2, tie=True, eps=1e-5)}  # Llama 2/3's and SmolLM's rms_norm_eps


def ours(Hk=2, tie=False, V=37, C=16, I=24, L=2, H=4, T=32, theta=500.0, attention="auto", seed=0, eps=1e-6):
    cfg = LlamaConfig(vocab_size=V, hidden_size=C, intermediate_size=I, num_hidden_layers=L, num_attention_heads=H,
                      num_key_value_heads=Hk, max_position_embeddings=T, tie_word_embeddings=tie, rope_theta=theta,
                      attention=attention, rms_norm_eps=eps)
    return Llama(cfg, seed=seed, dtype="float64", backend="numpy")


def batch(V=37, B=2, T=9, seed=0):
    rng = np.random.default_rng(seed)
    idx, targets = rng.integers(0, V, (2, B, T))
    targets[0, :3] = -1  # ignored positions
    return idx, targets


@pytest.mark.parametrize("case", CASES)
def test_transformers_agrees_on_logits_loss_and_every_gradient(case):
    hf = pytest.importorskip("tests.models.hf_llama")
    kw = CASES[case]
    with hf.float64_oracle():
        oracle = hf.hf_model(hf.hf_config(**kw))
        model = ours(**kw)
        assert set(model.params) == {n for n, _ in oracle.named_parameters()}  # a tied head is one parameter
        model.load_state_dict(hf.state_numpy(oracle))
        idx, targets = batch()
        logits, loss, cache = model.forward(idx, targets)
        want_logits, want_loss, want_grads = hf.loss_and_grads(oracle, idx, targets)
    assert hf.rel(logits, want_logits) <= 1e-12
    assert abs(float(loss) - want_loss) <= 1e-12 * abs(want_loss)
    grads = model.backward(cache)
    assert set(grads) == set(want_grads)
    for name, g in grads.items():
        assert hf.rel(g, want_grads[name]) <= 1e-9, name


@pytest.mark.parametrize("tie", [False, True])
def test_our_state_dict_loads_into_transformers_strictly(tie):
    hf = pytest.importorskip("tests.models.hf_llama")
    torch = hf.torch
    model = ours(Hk=2, tie=tie, seed=3)
    oracle = hf.hf_model(hf.hf_config(Hk=2, tie=tie), seed=9)
    state = model.state_dict()
    assert list(state) == list(oracle.state_dict())  # names and order, lm_head.weight included when tied
    with hf.float64_oracle():
        oracle.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
        idx, _ = batch()
        np.testing.assert_allclose(model.forward(idx)[0], oracle(torch.tensor(idx)).logits.detach().numpy(),
                                   rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("tie", [False, True])
def test_backward_rows_without_an_out_buffer_gives_the_same_gradients(tie):
    """The data-parallel runners pass ``out``; without it the (out, in) gradients must still come back as W's."""
    model = perturbed(tie=tie, I=20)  # non-square projections: a forgotten transpose changes the shape
    idx, targets = batch()
    _, _, cache = model.forward(idx, targets)
    grads = model.backward(cache)
    from scratchllm.kernels.dispatch import cross_entropy_backward

    dlogits, _ = cross_entropy_backward(np.asarray(1.0), cache["loss"])
    plain = model.backward_rows(dlogits, cache)
    assert set(plain) == set(grads)
    for name, g in grads.items():
        np.testing.assert_array_equal(plain[name], g, err_msg=name)


def test_a_tied_head_that_differs_is_refused():
    model = ours(tie=True)
    state = model.state_dict()
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    with pytest.raises(ValueError, match="lm_head.weight differs from model.embed_tokens.weight"):
        model.load_state_dict(state)


def perturbed(**kw):
    model = ours(**kw)
    rng = np.random.default_rng(1)
    for p in model.params.values():
        p += 0.1 * rng.standard_normal(p.shape)  # norms away from one, larger weights: every path matters
    return model


@pytest.mark.parametrize("case", CASES)
def test_whole_model_gradcheck(case):
    model = perturbed(**CASES[case], L=2, C=8, I=12, H=4, T=8)
    report = model_gradcheck(model, *batch(B=2, T=6), mode="directional")
    assert report.ok and report.max_rel_err <= 1e-7


@pytest.mark.parametrize("case", CASES)
def test_the_kv_cache_gives_the_whole_sequences_logits_and_keeps_grouped_heads_once(case):
    model = perturbed(**CASES[case]).eval()
    idx, _ = batch(T=10)
    whole = model.forward(idx)[0]
    kv = {}
    parts = [model.forward(idx[:, :6], kv_cache=kv)[0]] + [model.forward(idx[:, t:t + 1], kv_cache=kv)[0]
                                                           for t in range(6, 10)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, rtol=1e-12, atol=1e-13)
    assert kv[0][0].shape == (2, model.cfg.num_key_value_heads, 10, model.cfg.head_dim)


def test_flash_attention_gives_the_same_numbers():
    idx, targets = batch(T=20)
    runs = {}
    for mode in ("full", "flash"):
        model = perturbed(attention=mode)
        _, loss, cache = model.forward(idx, targets)
        runs[mode] = (float(loss), model.backward(cache))
    assert runs["flash"][0] == pytest.approx(runs["full"][0], rel=1e-13)
    for name, g in runs["full"][1].items():
        np.testing.assert_allclose(runs["flash"][1][name], g, rtol=1e-10, atol=1e-13, err_msg=name)


def test_data_parallel_shards_give_the_models_own_pass():
    model = perturbed()
    idx, targets = batch(B=4)
    _, loss1, cache1 = model.forward(idx, targets)
    grads1 = model.backward(cache1)
    _, loss, cache = DataParallel(model, workers=3).forward(idx, targets)
    grads = DataParallel(model, workers=3).backward(cache)
    assert float(loss) == pytest.approx(float(loss1), rel=1e-13)
    for name, g in grads1.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-11, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden_size=15, num_attention_heads=4), r"hidden_size \(15\) must be num_attention_heads \(4\) times an even"),
    (dict(hidden_size=12, num_attention_heads=4), "an even head dimension"),
    (dict(num_attention_heads=4, num_key_value_heads=3, hidden_size=16), r"num_key_value_heads \(3\) must divide"),
    (dict(vocab_size=0), "LlamaConfig.vocab_size must be a positive int; got 0"),
    (dict(rope_theta=0.0), "LlamaConfig.rope_theta must be a positive number"),
    (dict(attention="sparse"), "LlamaConfig.attention must be one of auto, full, flash"),
])
def test_bad_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LlamaConfig(**kwargs)


def test_defaults_are_transformers_and_the_ids_are_checked():
    transformers = pytest.importorskip("transformers")
    theirs, mine = transformers.LlamaConfig(), LlamaConfig()
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(mine, name) == getattr(theirs, name), name
    model = ours(T=8)
    with pytest.raises(ValueError, match="idx has T=9 positions .* but max_position_embeddings is 8"):
        model.forward(np.zeros((1, 9), np.int64))


@pytest.mark.gpu
def test_a_llama_step_on_the_gpu_equals_numpy():
    from scratchllm.backend import to_numpy

    models = {b: Llama(LlamaConfig(vocab_size=37, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32),
                       seed=1, dtype="float64", backend=b) for b in ("numpy", "cupy")}
    idx, targets = batch(T=20)
    runs = {}
    for b, model in models.items():
        _, loss, cache = model.forward(idx, targets)
        runs[b] = float(loss), {k: to_numpy(g) for k, g in model.backward(cache).items()}
    assert runs["cupy"][0] == pytest.approx(runs["numpy"][0], rel=1e-12)
    for name, g in runs["numpy"][1].items():
        np.testing.assert_allclose(runs["cupy"][1][name], g, rtol=1e-9, atol=1e-12, err_msg=name)
