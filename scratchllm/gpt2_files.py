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
import os
from pathlib import Path

from .tokenizer import BYTE_ORDER, ENDOFTEXT, ByteBPETokenizer, bytes_to_unicode, load_tokenizer

VOCAB_FILE, MERGES_FILE, HF_TOKENIZER_FILE = "vocab.json", "merges.txt", "tokenizer.json"
_BYTE_TO_UNICODE = bytes_to_unicode()
_UNICODE_TO_BYTE = {c: b for b, c in _BYTE_TO_UNICODE.items()}


def _spell(token: bytes) -> str:
    return "".join([_BYTE_TO_UNICODE[b] for b in token])


def _unspell(token: str, where: str) -> bytes:
    try:
        return bytes(_UNICODE_TO_BYTE[c] for c in token)
    except KeyError as e:
        raise ValueError(f"{where}: token {token!r} holds {e.args[0]!r}, not a byte-level BPE character") from None


def tokenizer_from_vocab_merges(vocab: dict, merges: list, where: str = "tokenizer") -> ByteBPETokenizer:
    """A ``ByteBPETokenizer`` from a ``{token: id}`` vocabulary and merges (``"a b"`` strings or pairs)."""
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and type(v) is int for k, v in vocab.items()):
        raise ValueError(f"{where}: the vocabulary must map token strings to int ids")
    index = {bytes([b]): i for i, b in enumerate(BYTE_ORDER)}  # token bytes -> canonical id
    pairs = []
    for n, merge in enumerate(merges, 1):
        parts = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(parts, (list, tuple)) and len(parts) == 2 and all(isinstance(p, str) and p for p in parts)):
            raise ValueError(f"{where}: merge {n} must be two tokens separated by one space; got {merge!r}")
        a, b = (_unspell(p, where) for p in parts)
        for part, token in zip(parts, (a, b)):
            if token not in index:
                raise ValueError(f"{where}: merge {n} ({' '.join(parts)}) uses {part!r}, neither a byte nor the "
                                 f"result of an earlier merge")
        pairs.append((index[a], index[b]))
        index.setdefault(a + b, len(index))
    tokens = {**{_spell(t): i for t, i in index.items()}, ENDOFTEXT: len(index)}  # spelling -> canonical id
    extra = sorted(set(vocab) - set(tokens), key=vocab.get)
    if extra:
        raise ValueError(f"{where}: token {extra[0]!r} (id {vocab[extra[0]]}) is neither a byte, a merge's result nor "
                         f"{ENDOFTEXT!r}; vocabularies with other added tokens are not supported")
    missing = sorted(set(tokens) - set(vocab), key=tokens.get)
    if missing:
        what = "the end-of-text token" if missing[0] == ENDOFTEXT else "token"
        raise ValueError(f"{where}: {what} {missing[0]!r} is not in the vocabulary (byte-level BPE needs the 256 "
                         f"byte tokens, every merge's result and {ENDOFTEXT!r})")
    ids = [0] * len(tokens)
    for spelling, canonical in tokens.items():
        ids[canonical] = vocab[spelling]
    if sorted(ids) != list(range(len(ids))):
        raise ValueError(f"{where}: the ids must be 0..{len(ids) - 1}, each once; got ids up to {max(ids)}")
    return ByteBPETokenizer(pairs, ids)


def read_gpt2_files(vocab_json, merges_txt) -> ByteBPETokenizer:
    """GPT-2's ``vocab.json`` and ``merges.txt`` (also what ``tokenizers``' ``model.save`` writes)."""
    vocab_json, merges_txt = Path(vocab_json), Path(merges_txt)
    for path in (vocab_json, merges_txt):
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
    try:
        vocab = json.loads(vocab_json.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{vocab_json} is not valid JSON ({e})") from None
    lines = merges_txt.read_text(encoding="utf-8").splitlines()
    merges = [line for n, line in enumerate(lines) if line and not (n == 0 and line.startswith("#version"))]
    return tokenizer_from_vocab_merges(vocab, merges, f"{vocab_json.parent}")


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


def write_gpt2_files(tokenizer: ByteBPETokenizer, directory) -> tuple[Path, Path]:
    """``vocab.json`` (ids in order) and ``merges.txt`` in GPT-2's layout; each written to a temporary file and
    renamed into place."""
    if not isinstance(tokenizer, ByteBPETokenizer):
        raise TypeError(f"only a ByteBPETokenizer has GPT-2 tokenizer files; got {type(tokenizer).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {tokenizer.id_to_token(i): i for i in range(tokenizer.vocab_size)}
    merges = "".join(f"{_spell(a)} {_spell(b)}\n" for a, b in tokenizer.merge_tokens())
    out = []
    for name, text in ((VOCAB_FILE, json.dumps(vocab, ensure_ascii=False)), (MERGES_FILE, "#version: 0.2\n" + merges)):
        tmp = directory / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, directory / name)
        out.append(directory / name)
    return out[0], out[1]


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
