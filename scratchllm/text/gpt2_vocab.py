"""GPT-2's vocabulary files as data: the byte <-> character map GPT-2 spells tokens with (``bytes_to_unicode``,
whose order is our byte-id order), ``vocab.json`` + ``merges.txt`` read into and written from a vocabulary and
merges, and the check that turns them into a byte-level BPE's merge pairs and id table. No tokenizer here:
``tokenizer.py`` builds its ``ByteBPETokenizer`` from these, ``gpt2_files.py`` adds Hugging Face's files.

    vocab.json    {"!": 0, ..., "Ġthe": 262, ..., "<|endoftext|>": 50256}    token (bytes_to_unicode form) -> id
    merges.txt    "#version: 0.2" then one merge per line, "Ġ t", in rank order
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ENDOFTEXT = "<|endoftext|>"
VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (``encoder.py``); its key order is our byte-id order."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_TO_CHAR = bytes_to_unicode()
BYTE_ORDER = tuple(_BYTE_TO_CHAR)  # BYTE_ORDER[id] is the byte that ids 0..255 stand for
_UNICODE_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def _spell(token: bytes) -> str:
    return "".join([_BYTE_TO_CHAR[b] for b in token])


def _unspell(token: str, where: str) -> bytes:
    try:
        return bytes(_UNICODE_TO_BYTE[c] for c in token)
    except KeyError as e:
        raise ValueError(f"{where}: token {token!r} holds {e.args[0]!r}, not a byte-level BPE character") from None


def vocab_merges_to_table(vocab: dict, merges: list, where: str = "tokenizer") -> tuple[list, list]:
    """``(pairs, ids)`` for ``ByteBPETokenizer(pairs, ids)`` from a ``{token: id}`` vocabulary and merges (``"a b"``
    strings or pairs): the merges as pairs of canonical ids, and each canonical token's id in the vocabulary."""
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
    return pairs, ids


def read_vocab_merges(vocab_json, merges_txt) -> tuple[dict, list, str]:
    """``(vocab, merges, where)`` from GPT-2's ``vocab.json`` and ``merges.txt`` (also what ``tokenizers``'
    ``model.save`` writes)."""
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
    return vocab, merges, f"{vocab_json.parent}"


def write_vocab_merges(directory, vocab: dict, merge_tokens) -> tuple[Path, Path]:
    """``vocab.json`` ({token: id}, ids in order) and ``merges.txt`` (the merges' byte pairs, in rank order) in
    GPT-2's layout into ``directory``; each written to a temporary file and renamed into place."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merges = "".join(f"{_spell(a)} {_spell(b)}\n" for a, b in merge_tokens)
    out = []
    for name, text in ((VOCAB_FILE, json.dumps(vocab, ensure_ascii=False)), (MERGES_FILE, "#version: 0.2\n" + merges)):
        tmp = directory / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, directory / name)
        out.append(directory / name)
    return out[0], out[1]
