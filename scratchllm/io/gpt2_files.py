"""GPT-2's tokenizer files: ``vocab.json`` + ``merges.txt``, and Hugging Face ``tokenizers``' ``tokenizer.json``.

    vocab.json    {"!": 0, ..., "Ġthe": 262, ..., "<|endoftext|>": 50256}    token (bytes_to_unicode form) -> id
    merges.txt    "#version: 0.2" then one merge per line, "Ġ t", in rank order

Reading builds a ``ByteBPETokenizer`` from the merges (its canonical ids: the 256 bytes, each merge's result,
then ``<|endoftext|>``) and takes every token's id from ``vocab.json``, so ``encode`` returns the file's ids
exactly, as the model's embedding rows expect (GPT-2's own files give the identity; a Hugging Face-trained
vocabulary, with ``<|endoftext|>`` usually at 0, gives an id table). The vocabulary must hold exactly the 256
byte tokens, every merge's result and ``<|endoftext|>``: anything else (more special tokens, a missing byte)
is refused with one line, since encoding would then differ from the reference tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..text.gpt2_vocab import ENDOFTEXT, MERGES_FILE, VOCAB_FILE, vocab_merges_to_table
from ..text.tokenizer import ByteBPETokenizer, load_tokenizer

HF_TOKENIZER_FILE = "tokenizer.json"
def read_hf_tokenizer_json(path) -> ByteBPETokenizer:
    """A Hugging Face ``tokenizers`` ``tokenizer.json`` that is GPT-2's tokenizer: a BPE model, the ByteLevel
    pre-tokenizer with GPT-2's regex and no prefix space, no normalizer, no added tokens but ``<|endoftext|>``."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    model, pre = d.get("model") or {}, d.get("pre_tokenizer") or {}
    problems = [
        (model.get("type") != "BPE", f"model type {model.get('type')!r} (only 'BPE')"),
        (pre.get("type") != "ByteLevel", f"pre_tokenizer {pre.get('type')!r} (only GPT-2's 'ByteLevel')"),
        (pre.get("add_prefix_space") is True, "add_prefix_space=true"),
        (pre.get("use_regex") is False, "use_regex=false"),
        (d.get("normalizer") is not None, f"normalizer {(d.get('normalizer') or {}).get('type')!r}"),
        (bool(model.get("dropout")), "BPE dropout"),
        (bool(model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")), "subword affixes"),
        (model.get("byte_fallback") is True or model.get("ignore_merges") is True, "byte_fallback or ignore_merges"),
    ]
    for bad, what in problems:
        if bad:
            raise ValueError(f"{path}: {what} is not supported; scratchllm reads GPT-2 byte-level BPE tokenizers")
    for added in d.get("added_tokens") or []:
        if added.get("content") != ENDOFTEXT:
            raise ValueError(f"{path}: added token {added.get('content')!r} is not supported (only {ENDOFTEXT!r})")
    return tokenizer_from_vocab_merges(model.get("vocab"), model.get("merges") or [], str(path))


def tokenizer_from_vocab_merges(vocab: dict, merges: list, where: str = "tokenizer") -> ByteBPETokenizer:
    """A ``ByteBPETokenizer`` from a ``{token: id}`` vocabulary and merges (``"a b"`` strings or pairs)."""
    return ByteBPETokenizer(*vocab_merges_to_table(vocab, merges, where))


def read_gpt2_files(vocab_json, merges_txt) -> ByteBPETokenizer:
    """GPT-2's ``vocab.json`` and ``merges.txt`` (also what ``tokenizers``' ``model.save`` writes)."""
    return ByteBPETokenizer.from_gpt2_files(vocab_json, merges_txt)


def write_gpt2_files(tokenizer: ByteBPETokenizer, directory) -> tuple[Path, Path]:
    """``vocab.json`` (ids in order) and ``merges.txt`` in GPT-2's layout; each written to a temporary file and
    renamed into place."""
    if not isinstance(tokenizer, ByteBPETokenizer):
        raise TypeError(f"only a ByteBPETokenizer has GPT-2 tokenizer files; got {type(tokenizer).__name__}")
    return tokenizer.save_gpt2_files(directory)


def load_tokenizer_dir(directory):
    """The tokenizer a directory holds: scratchllm's ``tokenizer.json``, Hugging Face's ``tokenizer.json`` (what
    ``transformers`` itself loads first), or ``vocab.json`` + ``merges.txt``. ``FileNotFoundError`` if none."""
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"tokenizer path {directory} does not exist")
    if directory.is_file():  # a file named directly
        if directory.name == MERGES_FILE or directory.name == VOCAB_FILE:
            return read_gpt2_files(directory.with_name(VOCAB_FILE), directory.with_name(MERGES_FILE))
        return _load_tokenizer_json(directory)
    _check_tokenizer_config(directory)
    if (directory / HF_TOKENIZER_FILE).is_file():
        return _load_tokenizer_json(directory / HF_TOKENIZER_FILE)
    if (directory / VOCAB_FILE).is_file() or (directory / MERGES_FILE).is_file():
        return read_gpt2_files(directory / VOCAB_FILE, directory / MERGES_FILE)
    raise FileNotFoundError(f"{directory} holds no tokenizer ({VOCAB_FILE} + {MERGES_FILE}, or {HF_TOKENIZER_FILE})")


def _load_tokenizer_json(path: Path):
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if isinstance(d, dict) and "model" in d:  # Hugging Face tokenizers' format
        return read_hf_tokenizer_json(path)
    return load_tokenizer(path)  # scratchllm's own


def _check_tokenizer_config(directory: Path) -> None:
    """``tokenizer_config.json`` / ``added_tokens.json`` settings that would change Hugging Face's encoding."""
    for name in ("tokenizer_config.json", "added_tokens.json"):
        path = directory / name
        if not path.is_file():
            continue
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            continue
        if d.get("add_prefix_space") is True:
            raise ValueError(f"{path}: add_prefix_space=true is not supported (GPT-2 adds no prefix space)")
        if name == "added_tokens.json":  # token -> id
            added = list(d)
        else:  # id -> {"content": token, ...}
            added = [v.get("content") for v in (d.get("added_tokens_decoder") or {}).values() if isinstance(v, dict)]
        others = [t for t in added if t != ENDOFTEXT]
        if others:
            raise ValueError(f"{path}: added token {others[0]!r} is not supported (only {ENDOFTEXT!r})")
