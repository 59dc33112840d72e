"""Hugging Face Llama directories: one saved by transformers loads (``generate --hf``, ``convert --from_hf``,
``init_from``) and generates transformers' greedy tokens; a checkpoint of ours exports and loads back in
transformers with equal logits (float64, 1e-12); the configs that compute something else are refused, one line."""

import json
import re
import shutil

import numpy as np
import pytest

from scratchllm import cli
from scratchllm.checkpoint import load_checkpoint, save_checkpoint
from scratchllm.generate import generate_ids
from scratchllm.io.hf_llama import HFError
from scratchllm.io.pretrained import load_pretrained
from scratchllm.models import Llama, LlamaConfig
from tests.test_hf import CORPUS, hf_trained  # noqa: F401 (a fixture: a byte-level BPE of 320 tokens)

hf = pytest.importorskip("tests.models.hf_llama")
torch, transformers = hf.torch, hf.transformers
V = 320


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, hf_trained):  # noqa: F811
    """A tiny random LlamaForCausalLM (grouped heads, untied head) saved by save_pretrained, with the tokenizer's
    vocab.json + merges.txt."""
    model = hf.hf_model(hf.hf_config(V=V, C=32, I=48, L=2, H=4, Hk=2, T=64), seed=4, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # away from the initialisation: peaked, decisive logits
    directory = tmp_path_factory.mktemp("hf") / "tiny-llama"
    model.save_pretrained(str(directory))
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(hf_trained[1] / name, directory / name)
    return directory, transformers.LlamaForCausalLM.from_pretrained(str(directory)).eval()


def test_a_transformers_llama_directory_loads_and_generates_its_greedy_tokens(llama_dir):
    directory, ref = llama_dir
    model, tokenizer = load_pretrained(directory, backend="numpy")
    assert isinstance(model, Llama) and model.cfg.num_key_value_heads == 2
    prompt = tokenizer.encode("def wrap(text, width):\n    ")
    logits = model.forward(np.array([prompt]))[0]
    want = ref(torch.tensor([prompt])).logits.detach().numpy()
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)  # float32 both (theirs: angles in float32)
    ours = generate_ids(model.eval(), prompt, 20, top_k=1)  # greedy, through our KV cache
    theirs = ref.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20, min_new_tokens=20,
                          pad_token_id=0)[0, len(prompt):].tolist()
    assert list(ours) == theirs


def test_generate_and_convert_from_the_command_line(llama_dir, tmp_path, capsys):
    directory, _ = llama_dir
    assert cli.main(["generate", f"--hf={directory}", "--prompt=def ", "--max_new_tokens=8", "--top_k=1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("def ") and len(text) > 5
    assert cli.main(["convert", f"--from_hf={directory}", f"--out={tmp_path / 'ckpt'}"]) == 0
    model, _, info = load_checkpoint(tmp_path / "ckpt", backend="numpy")
    assert info["config"]["arch"] == "llama"
    again, _ = load_pretrained(directory, backend="numpy")
    for name, p in again.params.items():
        np.testing.assert_array_equal(model.params[name], p)


@pytest.mark.parametrize("tie", [False, True])
def test_our_checkpoint_exports_and_transformers_gives_its_logits(tmp_path, tie, hf_trained):  # noqa: F811
    from scratchllm.io.gpt2_files import read_gpt2_files

    tokenizer = read_gpt2_files(hf_trained[1] / "vocab.json", hf_trained[1] / "merges.txt")
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=tie, rope_theta=300.0)
    model = Llama(cfg, seed=2, dtype="float64", backend="numpy")
    rng = np.random.default_rng(0)
    for p in model.params.values():
        p += 0.2 * rng.standard_normal(p.shape)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    assert cli.main(["convert", f"--ckpt={tmp_path / 'ckpt'}", f"--to_hf={tmp_path / 'hf'}"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "llama"
    with hf.float64_oracle():
        theirs = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float64,
                                                               attn_implementation="sdpa").eval()
        idx = rng.integers(0, V, (2, 12))
        want = theirs(torch.tensor(idx)).logits.detach().numpy()
    assert hf.rel(model.forward(idx)[0], want) <= 1e-12
    assert (theirs.lm_head.weight is theirs.model.embed_tokens.weight) == tie


@pytest.mark.parametrize("change, match", [
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope scaling 'linear'"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}), "rope scaling 'llama3'"),
    (dict(attention_bias=True), "attention_bias=true"),
    (dict(mlp_bias=True), "mlp_bias=true"),
    (dict(sliding_window=16), "sliding_window 16"),
    (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
    (dict(head_dim=4), "head_dim 4"),
])
def test_configs_that_compute_something_else_are_refused_with_one_line(llama_dir, tmp_path, change, match, capsys):
    directory, _ = llama_dir
    bad = tmp_path / "bad"
    shutil.copytree(directory, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(HFError, match=match):
        load_pretrained(bad, backend="numpy")
    assert cli.main(["convert", f"--from_hf={bad}", f"--out={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not supported" in err


def test_fine_tuning_starts_from_a_transformers_llama(llama_dir, tmp_path):
    from scratchllm.train import ConfigError, make_config, parse_overrides, train

    directory, _ = llama_dir
    data = tmp_path / "data.txt"
    data.write_text(CORPUS)
    overrides, _ = parse_overrides([f"--init_from={directory}", f"--data={data}", f"--out_dir={tmp_path / 'run'}",
                                    "--max_iters=3", "--eval_interval=3", "--eval_iters=1", "--batch_size=2",
                                    "--block_size=32", "--sample_tokens=0", "--progress=false", "--nproc=1"])
    summary = train(make_config(overrides), overrides=overrides)
    model, _, info = load_checkpoint(tmp_path / "run", backend="numpy")
    assert isinstance(model, Llama) and info["config"]["train"]["arch"] == "llama" and summary["step"] == 3
    assert info["config"]["train"]["n_kv_head"] == 2 and model.cfg.max_position_embeddings == 64
    for key in ("--n_head=2", "--n_kv_head=4"):  # a Llama key needs no --arch=llama: the model is one
        with pytest.raises(ConfigError, match=f"{key} conflicts with --init_from"):
            bad, _ = parse_overrides([f"--init_from={directory}", f"--data={data}", key, "--max_iters=1"])
            train(make_config(bad), overrides=bad)


def test_convert_writes_only_into_a_new_or_empty_directory(llama_dir, tmp_path, capsys):
    directory, _ = llama_dir
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("important")
    old_hf = tmp_path / "old_hf"
    shutil.copytree(directory, old_hf)
    for args, match in [
        ([f"--from_hf={directory}", f"--out={mine}"], "--out=.* exists and is not an empty directory"),
        ([f"--from_hf={directory}", f"--out={directory}"], "would overwrite the model it converts"),
        ([f"--from_hf={directory}", f"--out={directory / 'sub'}"], "would overwrite the model it converts"),
    ]:
        assert cli.main(["convert", *args]) == 2
        assert re.search(match, capsys.readouterr().err)
    assert (mine / "notes.txt").read_text() == "important" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert cli.main(["convert", f"--from_hf={directory}", f"--out={tmp_path / 'ckpt'}"]) == 0
    assert cli.main(["convert", f"--from_hf={directory}", f"--out={tmp_path / 'ckpt'}"]) == 0  # a checkpoint: replaced
    assert cli.main(["convert", f"--ckpt={tmp_path / 'ckpt'}", f"--to_hf={old_hf}"]) == 2  # stale tokenizer files
    assert "--to_hf=" in capsys.readouterr().err.splitlines()[-1]
    assert sorted(p.name for p in old_hf.iterdir()) == sorted(p.name for p in directory.iterdir())
