"""Hugging Face Llama interop without torch: load a ``LlamaForCausalLM`` directory, write one back.

Our Llama's parameters are named and shaped exactly as ``LlamaForCausalLM.state_dict()`` (``nn.Linear`` weights
(out, in)), so tensors cross as they are. A tied head is stored once, as ``model.embed_tokens.weight`` (as
transformers' ``save_pretrained`` does); a stored ``lm_head.weight`` must then equal it.

``config.json`` keys and what we take from them (a missing key takes ``LlamaConfig``'s default):

    vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
    max_position_embeddings, rms_norm_eps, rope_theta (or rope_parameters' rope_theta), tie_word_embeddings
    hidden_act "silu"; rope scaling none (rope_type "default"); attention_bias and mlp_bias false; no
    sliding_window; head_dim hidden_size / num_attention_heads; pretraining_tp 1              else refused
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import CONFIG_FILE, MODEL_FILE
from .hf import HFError, read_hf_tensors, write_hf_dir

LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=2048,
                      rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, hidden_act="silu",
                      rope_scaling=None, attention_bias=False, mlp_bias=False, pretraining_tp=1)


def read_llama_config(raw: dict, where):
    """``LlamaConfig`` from a Hugging Face Llama ``config.json`` (a dict), refusing every variant we do not
    compute exactly (the module docstring), each with one line naming the key."""
    from ..models.llama import LlamaConfig

    hf = {**LLAMA_DEFAULTS, **raw}
    rope, scaling = hf.get("rope_parameters") or {}, hf["rope_scaling"] or {}  # transformers 5 / 4 spellings
    theta = rope.get("rope_theta", hf["rope_theta"])
    types = [d.get("rope_type", d.get("type", "default")) for d in (rope, scaling) if d]
    rope_type = next((t for t in types if t != "default"), "default")
    heads = hf["num_attention_heads"]
    checks = [
        (hf["hidden_act"] not in ("silu", "swish"), f"hidden_act {hf['hidden_act']!r} (Llama's MLP is SwiGLU: "
                                                     "'silu')"),
        (rope_type != "default", f"rope scaling {rope_type!r} (only plain rotary embeddings)"),
        (hf["attention_bias"] is not False, "attention_bias=true (no biases in the projections here)"),
        (hf["mlp_bias"] is not False, "mlp_bias=true (no biases in the MLP here)"),
        (hf.get("sliding_window") is not None, f"sliding_window {hf.get('sliding_window')!r} (attention sees "
                                               "every earlier position here)"),
        (hf.get("head_dim") not in (None, hf["hidden_size"] // max(heads, 1)),
         f"head_dim {hf.get('head_dim')!r} (here hidden_size / num_attention_heads)"),
        (hf["pretraining_tp"] not in (None, 1), f"pretraining_tp {hf['pretraining_tp']!r}"),
    ]
    for bad, what in checks:
        if bad:
            raise HFError(f"{where}: {what} is not supported")
    try:
        return LlamaConfig(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                           intermediate_size=hf["intermediate_size"], num_hidden_layers=hf["num_hidden_layers"],
                           num_attention_heads=heads, num_key_value_heads=hf["num_key_value_heads"],
                           max_position_embeddings=hf["max_position_embeddings"], rms_norm_eps=hf["rms_norm_eps"],
                           rope_theta=theta, tie_word_embeddings=bool(hf["tie_word_embeddings"]))
    except (TypeError, ValueError) as e:
        raise HFError(f"{where}: {e}") from None


def load_hf_llama(path, raw: dict, dtype="float32", backend="auto"):
    """A ``Llama`` from a Hugging Face Llama directory whose ``config.json`` is ``raw``."""
    from ..models.llama import Llama

    path = Path(path)
    cfg = read_llama_config(raw, path / CONFIG_FILE)
    tensors, where = read_hf_tensors(path), path / MODEL_FILE
    model = Llama(cfg, dtype=dtype, backend=backend, init=False)
    head = tensors.pop("lm_head.weight", None) if cfg.tie_word_embeddings else None
    expected = {name: tuple(p.shape) for name, p in model.params.items()}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise HFError(f"{where} does not match config.json: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, shape in expected.items():
        a = tensors[name]
        if tuple(a.shape) != shape or a.dtype.kind != "f" or not np.isfinite(a).all():
            raise HFError(f"{where}: {name} has shape {tuple(a.shape)} and dtype {a.dtype.name}, expected {shape} "
                          "of finite floats")
    if head is not None and not np.array_equal(head, tensors["model.embed_tokens.weight"]):
        raise HFError(f"{where}: lm_head.weight differs from model.embed_tokens.weight, but tie_word_embeddings "
                      "is true")
    model.load_state_dict(tensors)
    return model


def hf_llama_config(model, tokenizer=None) -> dict:
    """The ``config.json`` of ``LlamaForCausalLM`` for ``model`` (every field we fix written explicitly)."""
    cfg = model.cfg
    eot = getattr(tokenizer, "eot_id", None)
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta, "rope_scaling": None, "tie_word_embeddings": cfg.tie_word_embeddings,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
            "pretraining_tp": 1, "initializer_range": 0.02, "bos_token_id": eot, "eos_token_id": eot,
            "dtype": model.dtype.name, "use_cache": True}


def save_hf_llama(model, path, tokenizer=None) -> Path:
    """Write ``model`` as a Hugging Face Llama directory that ``LlamaForCausalLM.from_pretrained`` loads: the
    parameters (a tied head once, as transformers saves it), ``config.json``, and with a byte-level BPE tokenizer
    its GPT-2 files. Each file is written to a temporary name and renamed into place."""
    from ..text.tokenizer import ByteBPETokenizer

    if tokenizer is not None and not isinstance(tokenizer, ByteBPETokenizer):
        raise ValueError(f"only a byte-level BPE tokenizer has a Hugging Face form; got {type(tokenizer).__name__}")
    tensors = {k: np.ascontiguousarray(v) for k, v in model.state_dict().items()
               if not (k == "lm_head.weight" and model.cfg.tie_word_embeddings)}
    return write_hf_dir(path, tensors, hf_llama_config(model, tokenizer), tokenizer, model.cfg.max_position_embeddings)
