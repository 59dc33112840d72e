"""Hugging Face GPT-2 interop without torch: load a ``save_pretrained`` directory, write one back.

A Hugging Face GPT-2 directory holds ``config.json`` (``model_type`` "gpt2") and ``model.safetensors`` (or
shards named by ``model.safetensors.index.json``), and usually the tokenizer: ``vocab.json`` + ``merges.txt``
and/or ``tokenizer.json`` (see ``scratchllm.io.gpt2_files``). Our parameters are named and shaped exactly like
``GPT2LMHeadModel``'s ``transformer.`` state dict without the prefix, with Conv1D's (in, out) weights, so
weights are copied as they are: no transposes.

Loading reads tensors with ``safetensors.numpy`` (bfloat16, which NumPy lacks, is widened to float32 by hand);
keys may carry the ``transformer.`` prefix or not; the attention-mask buffers of old checkpoints
(``h.{i}.attn.bias``, ``h.{i}.attn.masked_bias``) are ignored; ``lm_head.weight`` must be tied (absent) or
stored equal to ``wte.weight``. ``pytorch_model.bin`` is a pickle and is never read.

``config.json`` keys and what we take from them (a missing key takes ``GPT2Config``'s default):

    n_positions -> block_size, n_embd, n_layer, n_head, vocab_size
    resid_pdrop -> dropout (attn_pdrop and embd_pdrop are not separate here; GPT-2 has all three 0.1)
    activation_function  "gelu_new" or "gelu_pytorch_tanh" (both the tanh GELU)    else refused
    layer_norm_epsilon 1e-5, n_inner None or 4 * n_embd, scale_attn_weights true,
    scale_attn_by_inverse_layer_idx false, reorder_and_upcast_attn false, add_cross_attention false,
    tie_word_embeddings true (or lm_head.weight stored equal to wte.weight)          else refused
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np

from .checkpoint import CONFIG_FILE, FORMAT, MODEL_FILE, CheckpointError, _fsync_write, _load_json

INDEX_FILE = "model.safetensors.index.json"
PREFIX = "transformer."
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")
HF_DEFAULTS = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                   activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
                   layer_norm_epsilon=1e-5, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                   reorder_and_upcast_attn=False, add_cross_attention=False, tie_word_embeddings=True)


class HFError(CheckpointError):
    """A Hugging Face directory we cannot read or a GPT-2 variant we do not support: one clear line."""


def is_hf_dir(path) -> bool:
    """True when ``path`` is a directory whose ``config.json`` is a Hugging Face one (not scratchllm's)."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        d = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(d, dict) and d.get("format") != FORMAT and ("model_type" in d or "architectures" in d)


def read_hf_config(path):
    """``GPTConfig`` from a Hugging Face GPT-2 ``config.json``, refusing every variant we do not compute.

    Returns ``(cfg, hf)``: our config and the HF config with ``GPT2Config``'s defaults filled in.
    """
    from ..models.gpt import GPTConfig

    path = Path(path)
    where = path / CONFIG_FILE
    if not path.is_dir():
        raise HFError(f"{path} is not a directory (expected a Hugging Face GPT-2 directory from save_pretrained)")
    raw = _load_json(where, HFError, " (expected a Hugging Face GPT-2 directory from save_pretrained)")
    if raw.get("format") == FORMAT:
        raise HFError(f"{path} is a scratchllm checkpoint, not a Hugging Face directory")
    if raw.get("model_type", "gpt2") != "gpt2":
        raise HFError(f"{where}: model_type {raw['model_type']!r} is not supported (only 'gpt2' and 'llama')")
    hf = {**HF_DEFAULTS, **raw}
    n_embd = hf["n_embd"]
    checks = [
        (hf["activation_function"] not in GELU_TANH,
         f"activation_function {hf['activation_function']!r} (GPT-2's tanh GELU is 'gelu_new' or 'gelu_pytorch_tanh')"),
        (not isinstance(hf["layer_norm_epsilon"], (int, float)) or not math.isclose(hf["layer_norm_epsilon"], 1e-5),
         f"layer_norm_epsilon {hf['layer_norm_epsilon']!r} (scratchllm's LayerNorm uses 1e-5)"),
        (hf["n_inner"] is not None and hf["n_inner"] != 4 * n_embd,
         f"n_inner {hf['n_inner']!r} (the MLP is 4 * n_embd = {4 * n_embd} wide)"),
        (hf["scale_attn_weights"] is not True, "scale_attn_weights=false (attention is scaled by 1/sqrt(head dim))"),
        (hf["scale_attn_by_inverse_layer_idx"] is not False, "scale_attn_by_inverse_layer_idx=true"),
        (hf["reorder_and_upcast_attn"] is not False, "reorder_and_upcast_attn=true"),
        (hf["add_cross_attention"] is not False, "add_cross_attention=true (GPT-2 as a decoder with cross-attention)"),
    ]
    for bad, what in checks:
        if bad:
            raise HFError(f"{where}: {what} is not supported")
    dropout = hf["resid_pdrop"]
    try:
        cfg = GPTConfig(hf["vocab_size"], hf["n_positions"], hf["n_layer"], hf["n_head"], n_embd,
                        float(dropout) if isinstance(dropout, (int, float)) else dropout)
    except (TypeError, ValueError) as e:
        raise HFError(f"{where}: {e}") from None
    return cfg, hf


def _read_safetensors(path: Path) -> dict:
    """NumPy arrays of one safetensors file; bfloat16 (no NumPy dtype) is widened to float32 exactly."""
    from safetensors.numpy import load

    data = path.read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        if not any(isinstance(t, dict) and t.get("dtype") == "BF16" for t in header.values()):
            return load(data)
        out = {}
        for name, t in header.items():  # the format is a JSON header, then the raw little-endian tensors
            if name != "__metadata__":
                start, end = (8 + n + o for o in t["data_offsets"])
                dtype = {"BF16": "<u2", "F16": "<f2", "F32": "<f4", "F64": "<f8"}[t["dtype"]]
                a = np.frombuffer(data[start:end], dtype=dtype).reshape(t["shape"])
                out[name] = (a.astype(np.uint32) << 16).view(np.float32) if t["dtype"] == "BF16" else a
        return out
    except Exception as e:  # a truncated file, a header that is not JSON, SafetensorError, an unknown dtype
        raise HFError(f"{path} is not a valid safetensors file ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None


def read_hf_tensors(path) -> dict:
    """Every tensor of a Hugging Face directory (``model.safetensors`` or the shards its index names)."""
    path = Path(path)
    if (path / MODEL_FILE).is_file():
        files = [path / MODEL_FILE]
    elif (path / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
            files = [path / name for name in sorted(set(weight_map.values()))]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise HFError(f"{path / INDEX_FILE} is not a valid safetensors index ({e})") from None
        for f in files:
            if not f.is_file() or f.parent != path:
                raise HFError(f"{f} named by {path / INDEX_FILE} is missing")
    elif any((path / n).exists() for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")):
        raise HFError(f"{path} has no model.safetensors; scratchllm never unpickles pytorch_model.bin: re-save it "
                      f"with transformers' save_pretrained (safe_serialization=True)")
    else:
        raise HFError(f"{path / MODEL_FILE} is missing")
    tensors = {}
    for f in files:
        tensors.update(_read_safetensors(f))
    return tensors


def hf_state_dict(tensors: dict, cfg, where="model.safetensors", tie_word_embeddings=True) -> dict:
    """Our state dict from Hugging Face GPT-2 tensors: prefix dropped, mask buffers ignored, tied head checked,
    names, shapes and values validated."""
    from ..models.gpt import param_shapes

    state, lm_head = {}, None
    for key, value in tensors.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        parts = name.split(".")
        if len(parts) == 4 and parts[0] == "h" and parts[2] == "attn" and parts[3] in ("bias", "masked_bias"):
            continue  # the causal-mask buffers of old checkpoints
        if name == "lm_head.weight":
            lm_head = value
            continue
        if name in state:
            raise HFError(f"{where}: {name} is stored twice (with and without {PREFIX!r})")
        state[name] = value
    expected = param_shapes(cfg)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise HFError(f"{where} does not match config.json: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, shape in expected.items():
        a = state[name]
        if tuple(a.shape) != shape:
            raise HFError(f"{where}: {name} has shape {tuple(a.shape)}, expected {shape}")
        if a.dtype.kind != "f":
            raise HFError(f"{where}: {name} has dtype {a.dtype.name}, expected a float dtype")
        if not np.isfinite(a).all():
            raise HFError(f"{where}: {name} holds NaN or Inf")
    if lm_head is not None:
        if tuple(lm_head.shape) != expected["wte.weight"] or not np.array_equal(lm_head, state["wte.weight"]):
            raise HFError(f"{where}: lm_head.weight differs from wte.weight; only a tied output head is supported")
    elif not tie_word_embeddings:
        raise HFError(f"{where}: tie_word_embeddings is false and lm_head.weight is missing; only a tied output "
                      f"head is supported")
    return state


def load_hf_gpt2(path, dtype="float32", backend="auto"):
    """A ``GPT`` from a Hugging Face GPT-2 directory (``save_pretrained``'s, or a downloaded snapshot).

    Refuses, with one line (``HFError``), every config we do not compute exactly (see the module doc). The
    model's dropout is the checkpoint's ``resid_pdrop``; like every new ``GPT`` it starts in training mode.
    """
    from ..models.gpt import GPT

    cfg, hf = read_hf_config(path)
    state = hf_state_dict(read_hf_tensors(path), cfg, Path(path) / MODEL_FILE, hf["tie_word_embeddings"])
    model = GPT(cfg, dtype=dtype, backend=backend, init=False)
    model.load_state_dict(state)
    return model


def load_hf_tokenizer(path):
    """The tokenizer of a Hugging Face GPT-2 directory (``tokenizer.json``, else ``vocab.json`` + ``merges.txt``)."""
    from .gpt2_files import load_tokenizer_dir

    return load_tokenizer_dir(path)


def hf_config(model, tokenizer=None) -> dict:
    """The ``config.json`` of ``GPT2LMHeadModel`` for ``model`` (every field we fix written explicitly)."""
    cfg = model.cfg
    eot = getattr(tokenizer, "eot_id", None)
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout, "layer_norm_epsilon": 1e-5,
            "initializer_range": 0.02, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "add_cross_attention": False, "tie_word_embeddings": True,
            "bos_token_id": eot, "eos_token_id": eot, "dtype": model.dtype.name, "use_cache": True}


def save_hf_gpt2(model, path, tokenizer=None) -> Path:
    """Write ``model`` as a Hugging Face GPT-2 directory that ``GPT2LMHeadModel.from_pretrained`` loads.

    ``model.safetensors`` holds the ``transformer.``-prefixed tensors in the model's dtype (metadata
    ``{"format": "pt"}``) and no ``lm_head.weight`` (transformers ties it to ``wte``, as its own
    ``save_pretrained`` does); ``config.json`` is ``hf_config``. With a ``ByteBPETokenizer``, also
    ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json``. Each file is written to a temporary name and
    renamed into place. No torch needed.
    """
    from ..text.tokenizer import ByteBPETokenizer

    if tokenizer is not None and not isinstance(tokenizer, ByteBPETokenizer):
        raise ValueError(f"only a byte-level BPE tokenizer has a Hugging Face GPT-2 form; "
                         f"got {type(tokenizer).__name__}")
    if tokenizer is not None and tokenizer.vocab_size > model.cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.cfg.vocab_size}")
    tensors = {PREFIX + k: np.ascontiguousarray(v) for k, v in model.state_dict().items()}
    return write_hf_dir(path, tensors, hf_config(model, tokenizer), tokenizer, model.cfg.block_size)


def write_hf_dir(path, tensors: dict, config: dict, tokenizer=None, max_length=None) -> Path:
    """A Hugging Face model directory: ``model.safetensors`` (metadata ``{"format": "pt"}``), ``config.json``, and
    with a byte-level BPE tokenizer its ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json``. Each file is
    written to a temporary name and renamed into place."""
    from safetensors.numpy import save

    from .gpt2_files import write_gpt2_files
    from ..text.tokenizer import ENDOFTEXT

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    files = {MODEL_FILE: save(tensors, metadata={"format": "pt"}),
             CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode()}
    if tokenizer is not None:
        tok_config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT,
                      "unk_token": ENDOFTEXT, "add_prefix_space": False, "model_max_length": max_length}
        files["tokenizer_config.json"] = (json.dumps(tok_config, indent=2) + "\n").encode()
        write_gpt2_files(tokenizer, path)
    for name, data in files.items():
        tmp = path / f".{name}.tmp-{os.getpid()}"
        _fsync_write(tmp, data)
        os.replace(tmp, path / name)
    return path
