"""``scratchllm train --arch=llama`` (and the llama-tiny preset): the config keys, a run that trains, resumes
bit-exactly and samples, its checkpoint (arch recorded, tied heads once), generate with the KV cache."""

import json

import numpy as np
import pytest

from scratchllm.checkpoint import load_checkpoint, resolve_checkpoint
from scratchllm.config import model_config, model_shape
from scratchllm.generate import generate_ids
from scratchllm.models import Llama
from scratchllm.train import PRESETS, ConfigError, make_config, parse_overrides, train
from tests.test_train import SMALL, corpus, rows  # noqa: F401 (corpus: a fixture)

LLAMA = [*SMALL, "--arch=llama", "--n_head=4", "--n_kv_head=2", "--n_embd=16"]


def config(tmp_path, data, *extra):
    overrides, _ = parse_overrides([f"--data={data}", f"--out_dir={tmp_path}", *LLAMA, *extra])
    return make_config(overrides)


def test_the_llama_keys_and_their_checks():
    cfg = make_config({"preset": "llama-tiny"})
    assert (cfg.arch, cfg.n_kv_head, cfg.n_layer, cfg.n_embd) == ("llama", 2, 3, 128) and "llama-tiny" in PRESETS
    m = model_config(cfg, 101)
    assert (m.hidden_size, m.intermediate_size, m.num_key_value_heads, m.max_position_embeddings) == (128, 352, 2, 64)
    assert model_shape(m) == {**{k: getattr(cfg, k) for k in model_shape(m)}, "vocab_size": 101, "n_inner": 352}
    for overrides, match in [
        ({"n_kv_head": 2}, "--n_kv_head is a Llama key: add --arch=llama"),
        ({"arch": "llama", "dropout": 0.1}, "--arch=llama has no dropout"),
        ({"arch": "llama", "n_head": 4, "n_kv_head": 3}, r"--n_kv_head \(3\) must divide --n_head \(4\)"),
        ({"arch": "llama", "n_embd": 12, "n_head": 4}, "even head size"),
        ({"arch": "mamba"}, "--arch must be one of gpt, llama"),
    ]:
        with pytest.raises(ConfigError, match=match):
            make_config(overrides)


def test_a_llama_run_trains_and_its_checkpoint_loads_and_samples(tmp_path, corpus):  # noqa: F811
    """(Its resume is bit-exact: tests/test_train.py's resume test runs a Llama too.)"""
    summary = train(config(tmp_path, corpus, "--max_iters=8", "--eval_interval=4", "--learning_rate=1e-2"))
    vals = [r["val_loss"] for r in rows(tmp_path) if "val_loss" in r]
    assert summary["step"] == 8 and vals[-1] < vals[0] - 0.2  # it learns
    model, tokenizer, info = load_checkpoint(tmp_path, backend="numpy")
    assert isinstance(model, Llama) and info["config"]["arch"] == "llama"
    assert model.cfg.num_key_value_heads == 2 and json.loads((resolve_checkpoint(tmp_path) / "config.json")
                                                             .read_text())["model"]["num_key_value_heads"] == 2
    ids = generate_ids(model, tokenizer.encode("def "), 12, seed=3)  # through the KV cache
    np.testing.assert_array_equal(ids, generate_ids(model, tokenizer.encode("def "), 12, seed=3))
    assert len(ids) == 12  # the new tokens


def test_a_tied_llama_checkpoint_keeps_the_head_once(tmp_path, corpus):  # noqa: F811
    train(config(tmp_path, corpus, "--max_iters=2", "--eval_interval=2", "--tie_embeddings=true"))
    model, _, _ = load_checkpoint(tmp_path, backend="numpy")
    assert model.cfg.tie_word_embeddings and "lm_head.weight" not in model.params
    assert "lm_head.weight" in model.state_dict()  # as transformers' state dict has it
