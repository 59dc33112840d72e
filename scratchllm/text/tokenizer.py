"""Tokenizers: characters (nanoGPT's shakespeare_char) and byte-level BPE (GPT-2), trained from scratch.

Both map ``str -> list[int]`` and back, save to one ``tokenizer.json`` (our own small schema, never pickle)
and are rebuilt by ``load_tokenizer(path)``:

    {"type": "char", "version": 1, "chars": ["\\n", " ", "!", ...]}                       id = position
    {"type": "byte_bpe", "version": 1, "pattern": GPT2_PATTERN, "byte_order": "gpt2",
     "merges": [[a, b], ...], "special_tokens": {"<|endoftext|>": id}, "ids": [...] (only when not 0..n-1)}

Byte-level BPE, as GPT-2 (and Hugging Face ``tokenizers`` ByteLevel BPE) does it:

- ids 0..255 are the 256 bytes in GPT-2's order, the order of ``bytes_to_unicode()``: the printable bytes
  ``!``..``~``, ``¡``..``¬``, ``®``..``ÿ`` first (id 0 is ``!``), then the other bytes ascending (byte 0 is id
  188, the space is id 220). That is also the code-point order of the bytes' GPT-2 characters, the order Hugging
  Face's trainer gives its alphabet. ``id_to_token`` spells a token the way GPT-2's ``vocab.json`` does.
- Text is split by GPT-2's regex (``GPT2_PATTERN``) into chunks; merges never cross a chunk boundary.
- Training counts adjacent pairs over the distinct chunks weighted by their frequency and merges the most
  frequent pair; ties go to the smallest ``(left id, right id)`` (Hugging Face's rule). A merge's result takes
  the next id, unless those bytes already are a token (then it reuses that id, as Hugging Face does).
- The end-of-text token ``<|endoftext|>`` has the last id (GPT-2's 50256 is its last id too). ``encode`` treats
  the string ``"<|endoftext|>"`` as plain text unless ``allowed_special`` names it (tiktoken's argument;
  Hugging Face's GPT-2 tokenizer always treats it as special: pass ``allowed_special="all"`` for that).
- Canonical ids (above: bytes, then merge results, then end-of-text) define the structure; ``merges`` are
  pairs of canonical ids. An optional id table ``ids`` (``ids[canonical] = id``, a permutation of
  0..n-1) relabels them: ``encode`` returns, and ``decode``/``token_bytes`` take, the relabeled ids. It keeps
  the ids of foreign vocabularies exactly (a Hugging Face-trained ``vocab.json`` with ``<|endoftext|>`` = 0, or
  merged tokens numbered out of merge order), because a model's embedding rows follow those ids. GPT-2's own
  files need no table. ``scratchllm.io.gpt2_files`` reads and writes ``vocab.json`` + ``merges.txt``.
- Text goes to bytes with UTF-8 ``surrogatepass``, so ``decode(encode(s)) == s`` for every Python ``str``, lone
  surrogates included; ``decode`` of any id sequence never fails on bad UTF-8 (U+FFFD, as ``errors="replace"``).
"""

from __future__ import annotations

import codecs
import functools
import json
from collections import Counter
from pathlib import Path

from .bpe_train import learn_merges, merge_pair

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
VERSION = 1
DEFAULT_BPE_VOCAB = 1024
_CACHE_MAX = 200_000  # chunk -> ids entries kept by ByteBPETokenizer.encode before the cache is cleared


from .gpt2_vocab import (_BYTE_TO_CHAR, BYTE_ORDER, ENDOFTEXT, bytes_to_unicode,  # noqa: F401 (public names)
                         read_vocab_merges, vocab_merges_to_table, write_vocab_merges)
_BYTE_TO_ID = bytes(sorted(range(256), key=BYTE_ORDER.__getitem__))  # bytes.translate table: byte -> id


def _surrogatepass_or_replace(exc):
    try:
        return codecs.lookup_error("surrogatepass")(exc)
    except UnicodeDecodeError:
        return codecs.lookup_error("replace")(exc)


_ERRORS = "scratchllm.surrogatepass_or_replace"
codecs.register_error(_ERRORS, _surrogatepass_or_replace)


def _to_bytes(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")


@functools.lru_cache(maxsize=1)
def _gpt2_regex():
    import regex  # third-party: \p{L} and \p{N} are not in the standard library's re

    return regex.compile(GPT2_PATTERN)


def pretokenize(text: str) -> list[str]:
    """GPT-2's pre-tokenization: the regex chunks of ``text`` (they always join back to ``text``)."""
    return _gpt2_regex().findall(text)


def _check_text(text):
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")


def _check_ids(ids, vocab_size: int) -> list:
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        bad = next(i for i in ids if not 0 <= i < vocab_size)
        raise ValueError(f"ids holds {bad}, outside the vocabulary [0, {vocab_size})")
    return ids


class CharTokenizer:
    """One id per character; the vocabulary is the sorted set of the training text's characters (and, after
    ``extended``, the characters added in fine-tuning, after them).

    No special tokens (``eot_id`` is None). ``encode`` raises ``ValueError`` for a character outside the
    vocabulary, so every id sequence decodes back to exactly the text that made it.
    """

    eot_id = None

    def __init__(self, chars):
        chars = list(chars)
        bad = [c for c in chars if not (isinstance(c, str) and len(c) == 1)]
        if bad:
            raise ValueError(f"chars must be single characters; got {bad[0]!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("chars holds a character twice")
        if not chars:
            raise ValueError("chars is empty")
        self.chars = chars
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        """The vocabulary of ``text``: its distinct characters, sorted."""
        _check_text(text)
        if not text:
            raise ValueError("text is empty: a character tokenizer needs at least one character")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        _check_text(text)
        try:
            return [self._stoi[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            raise ValueError(f"character {c!r} (U+{ord(c):04X}) at position {text.index(c)} is not in the "
                             f"vocabulary of this {self.vocab_size}-character tokenizer") from None

    def extended(self, text: str) -> "CharTokenizer":
        """This vocabulary with the characters of ``text`` it lacks appended in sorted order (every old character
        keeps its id), or ``self`` when it lacks none; pair it with ``model.resize_token_embeddings``."""
        _check_text(text)
        new = sorted(set(text) - self._stoi.keys())
        return CharTokenizer(self.chars + new) if new else self

    def decode(self, ids) -> str:
        chars = self.chars
        return "".join([chars[i] for i in _check_ids(ids, self.vocab_size)])

    def to_dict(self) -> dict:
        return {"type": "char", "version": VERSION, "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        _check_header(d, "char")
        if not isinstance(d.get("chars"), list):
            raise ValueError("a char tokenizer needs 'chars', a list of characters")
        return cls(d["chars"])

    def save(self, path) -> Path:
        return _save(self.to_dict(), path)

    @classmethod
    def load(cls, path) -> "CharTokenizer":
        return cls.from_dict(_read_json(path))

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class ByteBPETokenizer:
    """GPT-2-style byte-level BPE: 256 byte tokens, then one token per merge, then ``<|endoftext|>``.

    ``merges`` is the ordered list of ``(left id, right id)`` pairs of canonical ids; a pair's position is its
    rank. ``ids``: None (canonical ids are the ids) or the id of each canonical token (see the module doc).
    """

    def __init__(self, merges=(), ids=None):
        self.merges = []
        self._ranks = {}   # pair -> rank (lower merges first)
        self._result = {}  # pair -> canonical id of the merged token
        vocab = [bytes([b]) for b in BYTE_ORDER]
        index = {t: i for i, t in enumerate(vocab)}
        for rank, pair in enumerate(merges):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                    and all(type(i) is int and 0 <= i < len(vocab) for i in pair)):
                raise ValueError(f"merge {rank} must be a pair of ids below {len(vocab)}; got {pair!r}")
            pair = tuple(pair)
            if pair in self._ranks:
                raise ValueError(f"merge {rank} repeats merge {self._ranks[pair]}: {pair}")
            token = vocab[pair[0]] + vocab[pair[1]]
            if token not in index:
                index[token] = len(vocab)
                vocab.append(token)
            self.merges.append(pair)
            self._ranks[pair] = rank
            self._result[pair] = index[token]
        self._tokens = vocab + [ENDOFTEXT.encode()]  # canonical order
        self.ids = _check_id_table(ids, len(self._tokens))
        self.eot_id = len(vocab) if self.ids is None else self.ids[len(vocab)]
        self._vocab = self._tokens  # id -> bytes
        if self.ids is not None:
            self._vocab = [b""] * len(self._tokens)
            for canonical, i in enumerate(self.ids):
                self._vocab[i] = self._tokens[canonical]
        self._cache = {}

    @classmethod
    def train(cls, text: str, vocab_size: int = DEFAULT_BPE_VOCAB) -> "ByteBPETokenizer":
        """Learn merges on ``text`` until ``vocab_size`` tokens (256 bytes + merges + end-of-text).

        Stops early (a smaller vocabulary) when no adjacent pair is left to merge.
        """
        _check_text(text)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 257:
            raise ValueError(f"vocab_size must be an int >= 257 (256 bytes + end-of-text); got {vocab_size!r}")
        return cls(_learn_merges(Counter(pretokenize(text)), vocab_size - 257))

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def encode(self, text: str, allowed_special=()) -> list[int]:
        """Token ids of ``text``. ``allowed_special``: ``"all"`` or a collection of special-token strings
        encoded as their own id; by default ``"<|endoftext|>"`` in ``text`` is ordinary text."""
        _check_text(text)
        if isinstance(allowed_special, str):
            allowed_special = {ENDOFTEXT} if allowed_special == "all" else {allowed_special}
        unknown = set(allowed_special) - {ENDOFTEXT}
        if unknown:
            raise ValueError(f"allowed_special holds {sorted(unknown)[0]!r}; the only special token is {ENDOFTEXT!r}")
        if not allowed_special:
            return self._encode_ordinary(text)
        ids = []
        for i, part in enumerate(text.split(ENDOFTEXT)):
            if i:
                ids.append(self.eot_id)
            ids.extend(self._encode_ordinary(part))
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        ids, cache = [], self._cache
        for chunk in pretokenize(text):
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                chunk_ids = self._bpe(list(_to_bytes(chunk).translate(_BYTE_TO_ID)))
                if self.ids is not None:
                    chunk_ids = tuple([self.ids[i] for i in chunk_ids])
                cache[chunk] = chunk_ids
            ids.extend(chunk_ids)
        return ids

    def _bpe(self, ids: list[int]) -> tuple:
        """GPT-2's ``bpe()`` on canonical ids: merge the lowest-ranked pair present, all its occurrences, until
        none is left."""
        ranks, inf = self._ranks, float("inf")
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, inf))
            if pair not in ranks:
                break
            ids = merge_pair(ids, pair, self._result[pair])
        return tuple(ids)

    def decode(self, ids) -> str:
        vocab = self._vocab
        data = b"".join([vocab[i] for i in _check_ids(ids, self.vocab_size)])
        return data.decode("utf-8", errors=_ERRORS)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for."""
        return self._vocab[_check_ids([token_id], self.vocab_size)[0]]

    def id_to_token(self, token_id: int) -> str:
        """A token as GPT-2's ``vocab.json`` spells it (``bytes_to_unicode`` characters; "Ġ" is the space)."""
        if token_id == self.eot_id:
            return ENDOFTEXT
        return "".join([_BYTE_TO_CHAR[b] for b in self.token_bytes(token_id)])

    def merge_tokens(self) -> list[tuple[bytes, bytes]]:
        """Each merge as the bytes of its two parts, in rank order (what ``merges.txt`` spells)."""
        return [(self._tokens[a], self._tokens[b]) for a, b in self.merges]

    @classmethod
    def from_gpt2_files(cls, vocab_json, merges_txt) -> "ByteBPETokenizer":
        """GPT-2's ``vocab.json`` + ``merges.txt`` (or a Hugging Face ByteLevel BPE's); keeps the file's ids."""
        return cls(*vocab_merges_to_table(*read_vocab_merges(vocab_json, merges_txt)))

    def save_gpt2_files(self, directory) -> tuple[Path, Path]:
        """Write ``vocab.json`` and ``merges.txt`` (GPT-2's layout) into ``directory``; returns their paths."""
        vocab = {self.id_to_token(i): i for i in range(self.vocab_size)}
        return write_vocab_merges(directory, vocab, self.merge_tokens())

    def to_dict(self) -> dict:
        d = {"type": "byte_bpe", "version": VERSION, "pattern": GPT2_PATTERN, "byte_order": "gpt2",
             "merges": [list(p) for p in self.merges], "special_tokens": {ENDOFTEXT: self.eot_id}}
        if self.ids is not None:
            d["ids"] = list(self.ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ByteBPETokenizer":
        _check_header(d, "byte_bpe")
        if d.get("pattern") != GPT2_PATTERN or d.get("byte_order") != "gpt2":
            raise ValueError("a byte_bpe tokenizer must use GPT-2's 'pattern' and 'byte_order' \"gpt2\"")
        if not isinstance(d.get("merges"), list):
            raise ValueError("a byte_bpe tokenizer needs 'merges', a list of [left id, right id] pairs")
        tok = cls(d["merges"], d.get("ids"))
        expected = {ENDOFTEXT: tok.eot_id}
        if d.get("special_tokens") != expected:
            raise ValueError(f"'special_tokens' must be {expected!r}; got {d.get('special_tokens')!r}")
        return tok

    def save(self, path) -> Path:
        return _save(self.to_dict(), path)

    @classmethod
    def load(cls, path) -> "ByteBPETokenizer":
        return cls.from_dict(_read_json(path))

    def __repr__(self):
        return f"ByteBPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"


def _check_id_table(ids, n: int):
    """None for the identity; otherwise ``ids`` as a list, checked to be a permutation of 0..n-1."""
    if ids is None:
        return None
    if not isinstance(ids, (list, tuple)) or any(type(i) is not int for i in ids):
        raise ValueError("'ids' must be a list of ints, one per token")
    if len(ids) != n or sorted(ids) != list(range(n)):
        raise ValueError(f"'ids' must be a permutation of 0..{n - 1} (one id per token); got {len(ids)} ids")
    return None if list(ids) == list(range(n)) else list(ids)


def _learn_merges(chunk_counts: Counter, max_merges: int) -> list[tuple[int, int]]:
    """BPE merges for distinct text chunks with their counts (``bpe_train.learn_merges`` on their byte ids)."""
    words = [list(_to_bytes(w).translate(_BYTE_TO_ID)) for w in chunk_counts]
    return learn_merges(words, list(chunk_counts.values()), [bytes([b]) for b in BYTE_ORDER], max_merges)


def _check_header(d, kind: str):
    if not isinstance(d, dict):
        raise ValueError(f"a tokenizer description must be a JSON object; got {type(d).__name__}")
    if d.get("type") != kind:
        raise ValueError(f"tokenizer type must be {kind!r}; got {d.get('type')!r}")
    if d.get("version") != VERSION:
        raise ValueError(f"tokenizer version must be {VERSION}; got {d.get('version')!r}")


def _resolve(path) -> Path:
    path = Path(path)
    return path / "tokenizer.json" if path.is_dir() else path


def _save(d: dict, path) -> Path:
    path = _resolve(path)
    path.write_text(json.dumps(d, ensure_ascii=True) + "\n", encoding="ascii")  # ASCII: lone surrogates survive
    return path


def _read_json(path) -> dict:
    path = _resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"tokenizer file {path} is not valid JSON ({e})") from None


TOKENIZERS = {"char": CharTokenizer, "byte_bpe": ByteBPETokenizer}


def load_tokenizer(path):
    """Load a ``tokenizer.json`` (or a directory holding one) written by ``save``, whatever its type."""
    d = _read_json(path)
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in TOKENIZERS:
        raise ValueError(f"{_resolve(path)}: unknown tokenizer type {kind!r}; expected one of {sorted(TOKENIZERS)}")
    try:
        return TOKENIZERS[kind].from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{_resolve(path)}: {e}") from None


def train_tokenizer(kind: str, text: str, vocab_size: int | None = None):
    """Train a tokenizer on ``text``: ``kind`` "char" or "bpe".

    For "bpe", ``vocab_size`` defaults to 1024. For "char" the vocabulary is the text's characters;
    ``vocab_size``, when given, is an upper bound (``ValueError`` when the text has more characters).
    """
    if kind == "char":
        tok = CharTokenizer.train(text)
        if vocab_size is not None and tok.vocab_size > vocab_size:
            raise ValueError(f"the text has {tok.vocab_size} distinct characters, more than vocab_size={vocab_size}")
        return tok
    if kind == "bpe":
        return ByteBPETokenizer.train(text, DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size)
    raise ValueError(f"kind must be 'char' or 'bpe'; got {kind!r}")
