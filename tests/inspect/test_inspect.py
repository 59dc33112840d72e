"""scratchllm.inspect: the attention maps are the forward's probabilities, the saliency is the finite-difference
derivative of the log-probability, the per-position losses are the cross-entropy's, and the update ratio is the
measured change of the parameters around a real step; GPT and Llama alike."""

import numpy as np
import pytest

from scratchllm.inspect import attention_maps, next_token_losses, saliency
from scratchllm.inspect.stats import attention_entropy, parameter_stats, training_stats
from scratchllm.models import GPT, GPTConfig, Llama, LlamaConfig
from scratchllm.optim import AdamW, decay_groups

IDS = np.array([3, 7, 1, 9, 4, 12, 5, 8, 0, 10])  # distinct ids: each embedding row is used at one position


def model(kind, dtype="float64"):
    if kind == "gpt":
        m = GPT(GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=8), seed=1, dtype=dtype,
                backend="numpy")
    else:
        m = Llama(LlamaConfig(vocab_size=13, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16),
                  seed=1, dtype=dtype, backend="numpy")
    rng = np.random.default_rng(0)
    for p in m.params.values():
        p += 0.3 * rng.standard_normal(p.shape)  # peaked attention, decisive logits
    return m


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_attention_maps_are_the_forwards_probabilities(kind):
    m = model(kind)
    maps = attention_maps(m, IDS)
    assert len(maps) == 2 and maps[0].shape == (2, 10, 10)
    for p in maps:
        np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-12)
        assert not np.triu(p, k=1).any()  # nothing above the diagonal: causal
    from scratchllm.ops import attention_forward

    _, _, caches = m.eval().forward(IDS[None])  # the same first layer from its q, k, v, by the textbook op
    q, k, v = caches[0]["attn"][:3]
    _, (_, _, _, p_cache, _, _) = attention_forward(q, k, v)
    np.testing.assert_allclose(maps[0], p_cache[0][0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_next_token_losses_are_the_cross_entropy(kind):
    m = model(kind)
    losses = next_token_losses(m, IDS)
    targets = np.concatenate([IDS[1:], [-1]])[None]
    _, loss, _ = m.eval().forward(IDS[None], targets)
    assert losses.shape == (9,) and losses.mean() == pytest.approx(float(loss), rel=1e-12)


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_saliency_is_the_finite_difference_of_the_log_probability(kind):
    """The gradient at position t, against central differences of log p(target) in the input embedding there:
    GPT's position row t (used at t only, not tied to the head), Llama's untied token row of IDS[t]."""
    m = model(kind)
    out = saliency(m, IDS, target=6)
    row = "wpe.weight" if kind == "gpt" else "model.embed_tokens.weight"

    def logp():
        logits = m.eval().forward(IDS[None])[0][0, -1]
        z = logits - logits.max()
        return z[6] - np.log(np.exp(z).sum())

    assert out["logprob"] == pytest.approx(float(logp()), rel=1e-12) and out["target"] == 6
    rng = np.random.default_rng(2)
    for t in (0, 4, 9):
        r = t if kind == "gpt" else IDS[t]
        direction = rng.standard_normal(8)
        saved = m.params[row][r].copy()
        m.params[row][r] = saved + 1e-5 * direction
        up = logp()
        m.params[row][r] = saved - 1e-5 * direction
        down = logp()
        m.params[row][r] = saved
        assert (up - down) / 2e-5 == pytest.approx(float(out["gradient"][t] @ direction), rel=1e-6, abs=1e-10)
    np.testing.assert_allclose(out["saliency"], np.linalg.norm(out["gradient"], axis=-1))
    assert saliency(m, IDS)["target"] == int(np.argmax(m.eval().forward(IDS[None])[0][0, -1]))


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_training_stats_measure_a_real_step(kind):
    m = model(kind, "float32")
    opt = AdamW(decay_groups(m.params, 0.1), lr=1e-2)
    idx, targets = np.random.default_rng(3).integers(0, 13, (2, 3, 10))
    m.trace = {}
    _, _, cache = m.forward(idx, targets)
    grads = m.backward(cache)
    before = {k: v.copy() for k, v in m.params.items()}
    grad_copies = {k: v.copy() for k, v in grads.items()}
    opt.step(grads)
    stats = training_stats(m, before, grad_copies, [cache], m.trace)
    m.trace = None
    for name, p in m.params.items():
        want = np.linalg.norm(p - before[name]) / np.linalg.norm(before[name])
        assert stats[name]["update_ratio"] == pytest.approx(want, rel=1e-5), name
        assert stats[name]["grad_norm"] == pytest.approx(np.linalg.norm(grad_copies[name]), rel=1e-5)
    layer = stats["layer 1"]
    assert len(layer["attn_entropy"]) == 2 and all(0 <= e <= np.log(10) + 1e-6 for e in layer["attn_entropy"])
    assert 0 <= layer["mlp_pre_tail_fraction"] <= 1 and layer["residual"]["std"] > 0
    final = m.trace  # None again: nothing recorded outside stats steps
    assert final is None and m.forward(idx, targets) and m.trace is None


def test_the_entropy_is_the_same_from_a_flash_cache_and_ids_must_be_one_sequence():
    from scratchllm.ops import attention_blocked_forward, flash_attention_forward

    q, k, v = (np.random.default_rng(s).standard_normal((2, 4 if s == 0 else 2, 70, 4)) for s in range(3))
    whole = attention_entropy(attention_blocked_forward(q, k, v, block=16)[1])
    np.testing.assert_allclose(attention_entropy(flash_attention_forward(q, k, v)[1]), whole, rtol=1e-12)
    with pytest.raises(ValueError, match=r"ids must be one sequence of token ids.*shape \(2, 5\)"):
        attention_maps(model("gpt"), IDS.reshape(2, 5))


def test_entropy_of_uniform_rows_is_log_of_the_keys_seen():
    p = np.tril(np.ones((3, 3)))
    p /= p.sum(axis=-1, keepdims=True)
    blocks = [(0, 3, 3, (p[None, None],), None)]
    q = np.zeros((1, 1, 3, 2))
    assert attention_entropy((q, None, None, blocks, 1.0)) == pytest.approx([np.mean(np.log([1, 2, 3]))])
    assert parameter_stats({"w": np.ones(4)}, {"w": np.ones(4)}, {"w": np.zeros(4)})["w"]["update_ratio"] == 0.0
    assert parameter_stats({"b": np.ones(4)}, {"b": np.zeros(4)}, {"b": np.ones(4)})["b"]["update_ratio"] is None


def test_train_stats_writes_the_rows_and_the_plot(tmp_path):
    from pathlib import Path
    import json

    from scratchllm.train import make_config, parse_overrides, train

    data = tmp_path / "data.txt"
    data.write_text(Path(__file__).read_text() * 3)
    overrides, _ = parse_overrides([f"--data={data}", f"--out_dir={tmp_path / 'run'}", "--n_layer=1", "--n_embd=16",
                                    "--n_head=2", "--block_size=16", "--batch_size=4", "--max_iters=6",
                                    "--eval_interval=3", "--eval_iters=1", "--sample_tokens=0", "--progress=false",
                                    "--stats", "--stats_interval=2"])
    assert overrides["stats"] is True  # a bare --stats
    from scratchllm.train import ConfigError

    with pytest.raises(ConfigError, match="--stats_interval=5 has no effect without --stats"):
        make_config({"stats_interval": 5})
    summary = train(make_config(overrides))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    stats = [r for r in rows if "stats" in r]
    assert [r["step"] for r in stats] == [0, 2, 4]
    assert {"wte.weight", "layer 0"} <= set(stats[0]["stats"]) and stats[1]["stats"]["wte.weight"]["update_ratio"] > 0
    if summary.get("stats_plot"):  # matplotlib installed (the plot extra)
        assert (tmp_path / "run" / "stats.png").read_bytes()[:4] == b"\x89PNG"


def test_the_inspect_command_writes_the_maps_the_saliency_and_json(tmp_path, capsys):
    import json

    from scratchllm import cli
    from scratchllm.checkpoint import save_checkpoint
    from scratchllm.tokenizer import CharTokenizer

    tok = CharTokenizer.train("def foo(x):\n    return x + 1\n")
    m = Llama(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32), seed=0)
    save_checkpoint(tmp_path / "ckpt", m, tok)
    out = tmp_path / "report"
    assert cli.main(["inspect", f"--ckpt={tmp_path / 'ckpt'}", "--prompt=def foo(x):", f"--out={out}",
                     "--target= "]) == 0
    assert "wrote" in capsys.readouterr().err
    report = json.loads((out / "inspect.json").read_text())
    assert report["tokens"][:3] == ["d", "e", "f"] and report["target"]["text"] == " "
    assert len(report["saliency"]) == 11 and len(report["next_token_loss"]) == 10
    assert np.array(report["attention"]).shape == (2, 2, 11, 11)
    for bad, match in [("--prompt=d", "at least 2 tokens"), ("--target=de", "--target must be one token")]:
        args = ["inspect", f"--ckpt={tmp_path / 'ckpt'}", f"--out={out}"] + ([bad] if bad.startswith("--prompt")
                                                                          else ["--prompt=def", bad])
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1
