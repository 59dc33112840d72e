"""The GPT: contract, initialisation, whole-model gradcheck, and Hugging Face GPT-2 as an oracle."""

import math

import numpy as np
import pytest

from scratchllm.gradcheck import gradcheck
from scratchllm.model import ATTN_BLOCK, GPT, GPTConfig, param_shapes

TINY = GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8)


def perturbed_model(cfg=TINY, dtype="float64", seed=0):
    """A model whose LayerNorm and bias parameters are not at their init values, so every term is exercised."""
    model = GPT(cfg, seed=seed, dtype=dtype, backend="numpy")
    rng = np.random.default_rng(seed + 1)
    for k, v in model.params.items():
        model.params[k] = (v + 0.1 * rng.standard_normal(v.shape)).astype(dtype)
    return model


def batch(cfg=TINY, B=2, T=5, seed=2, ignore=True):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cfg.vocab_size, (B, T))
    targets = rng.integers(0, cfg.vocab_size, (B, T))
    if ignore:
        targets[0, 1] = -1
    return idx, targets


def model_gradcheck(model, idx, targets, mode, dropout_seed=None, runner=None):
    """Every parameter of ``model`` at once (rebound, not written in place), through ``runner`` (a DataParallel;
    default the model itself)."""
    names, runner = list(model.params), runner or model

    def forward(*arrays):
        model.params = dict(zip(names, arrays))
        if dropout_seed is not None:
            model.rng = np.random.default_rng(dropout_seed)  # the same masks at every evaluation
        _, loss, cache = runner.forward(idx, targets)
        return loss, cache

    def backward(dloss, cache):
        grads = runner.backward(cache, dloss=dloss)
        return tuple(grads[n] for n in names)

    return gradcheck(forward, backward, [model.params[n] for n in names], names=names, mode=mode, rtol=1e-7)


def test_params_are_named_and_shaped_like_hf_gpt2():
    model = GPT(TINY, backend="numpy")
    assert list(model.params) == list(param_shapes(TINY))
    assert model.params["h.1.attn.c_attn.weight"].shape == (8, 24)
    assert model.params["h.0.mlp.c_proj.weight"].shape == (32, 8)
    assert model.params["wpe.weight"].shape == (6, 8) and model.params["wte.weight"].shape == (11, 8)
    assert all(v.dtype == np.float32 for v in model.params.values())
    assert model.num_params() == sum(int(np.prod(s)) for s in param_shapes(TINY).values())


def test_gpt2_initialisation():
    cfg = GPTConfig(vocab_size=500, block_size=64, n_layer=4, n_head=4, n_embd=64)
    p = GPT(cfg, seed=3, backend="numpy").params
    assert abs(p["wte.weight"].std() - 0.02) < 1e-3 and abs(p["h.0.mlp.c_fc.weight"].std() - 0.02) < 1e-3
    assert abs(p["h.2.mlp.c_proj.weight"].std() - 0.02 / math.sqrt(8)) < 5e-4
    assert abs(p["h.2.attn.c_proj.weight"].std() - 0.02 / math.sqrt(8)) < 5e-4
    assert (p["h.1.ln_1.weight"] == 1).all() and (p["ln_f.bias"] == 0).all() and (p["h.3.attn.c_attn.bias"] == 0).all()
    np.testing.assert_array_equal(GPT(cfg, seed=3, backend="numpy").params["wte.weight"], p["wte.weight"])


def test_forward_shapes_and_initial_loss_near_log_vocab():
    cfg = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg, backend="numpy")
    idx, targets = batch(cfg, B=3, T=16, ignore=False)
    logits, loss, _ = model.forward(idx, targets)
    assert logits.shape == (3, 16, 65) and logits.dtype == np.float32 and loss.shape == ()
    assert abs(float(loss) - math.log(65)) < 0.1
    logits2, loss2, _ = model.forward(idx)
    assert loss2 is None
    np.testing.assert_array_equal(logits, logits2)


def test_whole_model_gradcheck_every_parameter_full():
    model = perturbed_model()
    report = model_gradcheck(model, *batch(), mode="full")
    assert report.ok and len(report.inputs) == len(model.params)
    assert report.max_rel_err <= 1e-7


def test_whole_model_gradcheck_with_dropout_directional():
    cfg = GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8, dropout=0.3)
    report = model_gradcheck(perturbed_model(cfg), *batch(cfg), mode="directional", dropout_seed=5)
    assert report.ok and report.max_rel_err <= 1e-7


def test_tied_weight_gradient_adds_both_uses():
    model = perturbed_model()
    idx, targets = batch()
    logits, loss, cache = model.forward(idx, targets)
    grads = model.backward(cache)
    from scratchllm.ops import cross_entropy_backward, linear_backward

    dlogits, _ = cross_entropy_backward(1.0, cache["loss"])
    head_only = linear_backward(dlogits, cache["lm_head"])[1].T
    assert not np.allclose(grads["wte.weight"], head_only)  # the embedding use contributes too
    unused = sorted(set(range(11)) - set(idx.ravel().tolist()))
    np.testing.assert_allclose(grads["wte.weight"][unused], head_only[unused], rtol=1e-13)  # only the head


def test_positions_beyond_t_get_zero_gradient():
    model = perturbed_model()
    idx, targets = batch(T=4)
    grads = model.backward(model.forward(idx, targets)[2])
    assert not grads["wpe.weight"][4:].any() and grads["wpe.weight"][:4].any()


def test_against_hugging_face_gpt2_in_float64():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = perturbed_model()
    hcfg = transformers.GPT2Config(vocab_size=11, n_positions=6, n_embd=8, n_layer=2, n_head=2,
                                   activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                   layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0)
    hcfg._attn_implementation = "eager"
    hf = transformers.GPT2LMHeadModel(hcfg).double().eval()
    missing, unexpected = hf.load_state_dict({"transformer." + k: torch.tensor(v) for k, v in model.params.items()},
                                             strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # the head is tied to wte
    idx, targets = batch()
    logits, loss, cache = model.forward(idx, targets)
    grads = model.backward(cache)
    t_logits = hf(torch.tensor(idx)).logits
    t_loss = torch.nn.functional.cross_entropy(t_logits.reshape(-1, 11), torch.tensor(targets).reshape(-1),
                                               ignore_index=-1)  # our targets are already shifted
    t_loss.backward()
    np.testing.assert_allclose(logits, t_logits.detach().numpy(), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(loss, t_loss.item(), rtol=1e-8)
    named = dict(hf.named_parameters())
    for k, g in grads.items():
        t_grad = named["transformer." + k].grad.numpy()
        assert np.abs(g - t_grad).max() <= 1e-8 * np.abs(t_grad).max(), k


def test_float32_agrees_with_float64():
    m64 = perturbed_model()
    m32 = GPT(TINY, dtype="float32", backend="numpy")
    m32.load_state_dict(m64.state_dict())
    idx, targets = batch()
    l64, loss64, c64 = m64.forward(idx, targets)
    l32, loss32, c32 = m32.forward(idx, targets)
    g64, g32 = m64.backward(c64), m32.backward(c32)
    assert loss32.dtype == np.float32 and abs(float(loss32) - float(loss64)) < 1e-5
    for k in g64:
        assert g32[k].dtype == np.float32
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-5 * np.abs(g64[k]).max(), err_msg=k)


def test_train_eval_switch_controls_dropout():
    cfg = GPTConfig(vocab_size=11, block_size=6, n_layer=1, n_head=2, n_embd=8, dropout=0.5)
    model = GPT(cfg, backend="numpy")
    idx, _ = batch(cfg)
    a, b = model.forward(idx)[0], model.forward(idx)[0]
    assert not np.allclose(a, b)  # fresh masks each training step
    model.eval()
    c, d = model.forward(idx)[0], model.forward(idx)[0]
    np.testing.assert_array_equal(c, d)
    assert model.train().training


def test_assigning_params_changes_the_model():
    model = GPT(TINY, backend="numpy")
    idx, _ = batch()
    before = model.forward(idx)[0]
    model.params["ln_f.bias"] = np.full(8, 0.5, np.float32)
    assert not np.allclose(before, model.forward(idx)[0])


def attention_weights_kept(T, c):
    """P(T) of docs/gpt_backward.md: the weights the query blocks of c rows keep, per (batch, head)."""
    return sum((min(i0 + c, T) - i0) * min(i0 + c, T) for i0 in range(0, T, c))


@pytest.mark.parametrize("T", [16, 150])
def test_activation_bytes_match_the_documented_budget(T):
    """(Data parallel's shards keep the same, plus positions per shard: tests/parallel/test_data_parallel.py.)"""
    cfg = GPTConfig(vocab_size=65, block_size=T, n_layer=3, n_head=2, n_embd=16)
    model = GPT(cfg, backend="numpy")
    B = 4
    idx, targets = batch(cfg, B=B, T=T)
    cache = model.forward(idx, targets)[2]
    L, C, H, V = 3, 16, 2, 65
    P = attention_weights_kept(T, ATTN_BLOCK)
    assert P == (T * T if T <= ATTN_BLOCK else 64 * 64 + 64 * 128 + 22 * 150)  # 150 = 64 + 64 + 22 rows
    floats = B * T * (L * (20 * C + 2) + 2 * C + 2 + V) + L * B * H * P
    ints = 8 * B * T * 2 + B * T + 8 * T  # idx, targets (int64), the kept mask (bool), positions
    assert model.activation_bytes(cache) == 4 * floats + ints


@pytest.mark.parametrize("kwargs, match", [
    (dict(vocab_size=10, block_size=8, n_layer=1, n_head=3, n_embd=8), "divisible by n_head"),
    (dict(vocab_size=0, block_size=8, n_layer=1, n_head=2, n_embd=8), "vocab_size must be a positive int"),
    (dict(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=1.0), "dropout"),
    (dict(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8, attention="fast"), "attention must be one of"),
    (dict(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8, attention="flash", dropout=0.1),
     "no dropout on the attention weights"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)


def test_input_validation_names_the_problem():
    model = GPT(TINY, backend="numpy")
    with pytest.raises(ValueError, match="T=7 positions \\(after 0 cached\\) but block_size is 6"):
        model.forward(np.zeros((1, 7), np.int64))
    with pytest.raises(ValueError, match="idx holds 11, outside \\[0, 11\\)"):
        model.forward(np.array([[1, 11]]))
    with pytest.raises(TypeError, match="idx must be an integer array"):
        model.forward(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="targets must have idx's shape"):
        model.forward(np.zeros((1, 3), np.int64), np.zeros((1, 2), np.int64))
    with pytest.raises(ValueError, match="dtype must be one of float32, float64"):
        GPT(TINY, dtype="float16")
    with pytest.raises(ValueError, match="backend must be one of"):
        GPT(TINY, backend="jax")
    with pytest.raises(ValueError, match="forward called with targets"):
        model.backward(model.forward(np.zeros((1, 3), np.int64))[2])


def test_overfits_one_fixed_batch():
    from scratchllm.optim import AdamW, clip_grad_norm, decay_groups

    cfg = GPTConfig(vocab_size=16, block_size=8, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg, seed=0, backend="numpy")
    idx, targets = batch(cfg, B=4, T=8, seed=3, ignore=False)
    opt = AdamW(decay_groups(model.params, 0.01), lr=1e-2)
    losses = []
    for _ in range(120):
        _, loss, cache = model.forward(idx, targets)
        grads = model.backward(cache)
        clip_grad_norm(grads, 1.0)
        opt.step(grads)
        losses.append(float(loss))
    assert losses[0] > 2.5 and losses[-1] < 0.1, losses[::10]


def test_load_state_dict_writes_into_the_live_arrays():
    model = GPT(TINY, backend="numpy")
    live = model.params["ln_f.weight"]
    state = model.state_dict()
    state["ln_f.weight"][:] = 3.0
    model.load_state_dict(state)
    assert model.params["ln_f.weight"] is live and (live == 3.0).all()
    with pytest.raises(ValueError, match="ln_f.bias must have shape \\(8,\\)"):
        model.load_state_dict({**state, "ln_f.bias": np.zeros(3)})


def test_init_false_gives_zeros_of_the_right_shapes_fast():
    model = GPT(TINY, backend="numpy", init=False)
    assert all(not v.any() for v in model.params.values())
    assert {k: v.shape for k, v in model.params.items()} == param_shapes(TINY)


def test_flash_attention_in_the_model_gives_the_full_models_numbers_in_o_t_memory(monkeypatch):
    """attention="flash" against "full" (the query blocks' whole-matrix weights): the same loss and gradients in
    float64, at a T with several flash tiles and query blocks, and the activations without the T x T weights;
    "auto" takes flash when the whole matrix would take over a quarter of the free memory, and says why."""
    import scratchllm.models.base as base

    T = 300
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 11, (2, T)), rng.integers(0, 11, (2, T))
    runs = {}
    for mode in ("full", "flash"):
        model = GPT(GPTConfig(11, T, 2, 2, 8, attention=mode), seed=4, dtype="float64")
        _, loss, cache = model.forward(idx, targets)
        runs[mode] = (float(loss), model.backward(cache), model.activation_bytes(cache), model)
    assert runs["flash"][0] == pytest.approx(runs["full"][0], rel=1e-13)
    for k, g in runs["full"][1].items():
        np.testing.assert_allclose(runs["flash"][1][k], g, rtol=1e-10, atol=1e-13, err_msg=k)
    model = runs["full"][3]
    kept = runs["full"][2] - runs["flash"][2]  # the weights full keeps, less flash's outputs and log-sum-exps
    whole = model.whole_matrix_bytes(2, T)
    assert whole - 2 * 2 * 2 * T * (8 // 2 + 1) * 8 <= kept <= whole  # flash keeps out (D) and lse (1) per row
    assert model.attention_mode(T) == ("full", "attention=full")
    auto = GPT(GPTConfig(11, 8, 1, 2, 8), seed=0)
    need = auto.whole_matrix_bytes(4, 1000)
    monkeypatch.setattr(base, "free_memory", lambda xp: 4 * need - 1)
    mode, why = auto.attention_mode(1000, batch=4)
    assert mode == "flash" and "would take over 25% of the free memory" in why, why
    assert auto.attention_mode(1000, batch=1)[0] == "full"  # a quarter of the weights: they fit
    assert auto.attention_mode(1000, dropout=0.1, batch=4) == (
        "full", "auto: dropout on the attention weights needs the whole matrix")
