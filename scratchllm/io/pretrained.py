"""A model from wherever it is: a Hugging Face directory (GPT-2 or Llama, told apart by ``config.json``'s
``model_type``) or a scratchllm checkpoint; and a model written back as a Hugging Face directory of its kind.
``hf.py`` reads and writes GPT-2, ``hf_llama.py`` Llama; this module picks."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import CONFIG_FILE, load_checkpoint
from .gpt2_files import load_tokenizer_dir
from .hf import HFError, is_hf_dir, load_hf_gpt2, save_hf_gpt2
from .hf_llama import load_hf_llama, save_hf_llama


def load_hf_model(path, dtype="float32", backend="auto"):
    """A ``GPT`` or a ``Llama`` from a Hugging Face directory (``model_type`` "gpt2" or "llama")."""
    path = Path(path)
    try:
        raw = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raw = {}  # load_hf_gpt2 says what is wrong with it
    if isinstance(raw, dict) and raw.get("model_type") == "llama":
        return load_hf_llama(path, raw, dtype=dtype, backend=backend)
    return load_hf_gpt2(path, dtype=dtype, backend=backend)


def save_hf_model(model, path, tokenizer=None) -> Path:
    """``model`` as the Hugging Face directory of its kind (``GPT2LMHeadModel`` or ``LlamaForCausalLM``)."""
    from ..models import Llama

    return (save_hf_llama if isinstance(model, Llama) else save_hf_gpt2)(model, path, tokenizer)


def load_pretrained(path, dtype=None, backend="auto"):
    """``(model, tokenizer)`` from a Hugging Face GPT-2 or Llama directory or a scratchllm checkpoint (or run
    directory). ``dtype`` None: float32 for Hugging Face weights, the saved dtype for a checkpoint."""
    path = Path(path)
    if is_hf_dir(path):
        model = load_hf_model(path, dtype=dtype or "float32", backend=backend)
        try:
            tokenizer = load_tokenizer_dir(path)
        except FileNotFoundError as e:
            raise HFError(str(e)) from None
        except ValueError as e:
            raise HFError(str(e).splitlines()[0]) from None
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise HFError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                          f"{model.cfg.vocab_size}")
        return model, tokenizer
    model, tokenizer, _ = load_checkpoint(path, backend=backend, dtype=dtype)
    return model, tokenizer


def fit_vocabulary(model, tokenizer, text: str):
    """``(tokenizer, added)`` for fine-tuning ``model`` on ``text``: a character tokenizer gains the characters of
    ``text`` it lacks (``CharTokenizer.extended``) and the model a row for each (``resize_token_embeddings``, in
    place); ``added`` is the string of new characters ("" when none, or for a byte-level BPE, which encodes any
    text)."""
    from ..text.tokenizer import CharTokenizer

    if not isinstance(tokenizer, CharTokenizer):
        return tokenizer, ""
    grown = tokenizer.extended(text)
    if grown is not tokenizer:
        model.resize_token_embeddings(grown.vocab_size)
    return grown, "".join(grown.chars[tokenizer.vocab_size:])
