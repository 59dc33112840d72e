"""Tokenizers: exact round trips, deterministic training, GPT-2 byte order, save/load, Hugging Face cross-checks."""

import inspect
import json
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.tokenizer import (BYTE_ORDER, ENDOFTEXT, ByteBPETokenizer, CharTokenizer, bytes_to_unicode,
                                  load_tokenizer, pretokenize, train_tokenizer)

CORPUS = "".join(inspect.getsource(m) for m in (json, textwrap, inspect)) + (
    "Le café déjà vu — naïve façade. 東京は日本の首都です。 Ωμέγα 😀😀 don't we'll I'm it's\n\t\t  x  \n")
BPE = ByteBPETokenizer.train(CORPUS, 400)
CHAR = CharTokenizer.train(CORPUS)

# st.text() covers emoji, CJK, control characters, lone surrogates and "" (hypothesis shrinks towards "").
texts_with_special = st.lists(st.one_of(st.text(), st.just(ENDOFTEXT), st.just("<|endo"))).map("".join)


@given(st.text())
def test_bpe_round_trips_any_string(s):
    ids = BPE.encode(s)
    assert all(0 <= i < BPE.eot_id for i in ids)  # no special id unless allowed
    assert BPE.decode(ids) == s
    assert BPE.decode(np.asarray(ids, dtype=np.uint16)) == s


@given(texts_with_special)
def test_bpe_round_trips_with_special_tokens_allowed_or_not(s):
    allowed = BPE.encode(s, allowed_special="all")
    assert allowed.count(BPE.eot_id) == s.count(ENDOFTEXT)
    assert BPE.decode(allowed) == s and BPE.decode(BPE.encode(s)) == s


@given(st.lists(st.integers(0, BPE.vocab_size - 1), max_size=50))
def test_bpe_decode_of_any_ids_never_raises(ids):
    assert isinstance(BPE.decode(ids), str)


@given(st.text(alphabet=CHAR.chars))
def test_char_round_trips_strings_over_its_alphabet(s):
    assert CHAR.decode(CHAR.encode(s)) == s and len(CHAR.encode(s)) == len(s)


def test_lone_surrogates_and_split_characters():
    s = "a\ud800b\udfff\ud83d\ude00😀"  # lone surrogates, a surrogate pair as two code units, a real emoji
    assert BPE.decode(BPE.encode(s)) == s
    emoji = BPE.encode("😀")
    assert BPE.decode(emoji[:1]).endswith("\ufffd")  # half a character decodes to U+FFFD, never raises
    assert BPE.decode([]) == "" and BPE.encode("") == [] and CHAR.encode("") == []


def test_char_tokenizer_is_nanogpt_style():
    tok = CharTokenizer.train("hello world")
    assert tok.chars == sorted(set("hello world")) and tok.vocab_size == 8 and tok.eot_id is None
    assert tok.encode("hold") == [3, 5, 4, 1]  # " dehlorw"
    with pytest.raises(ValueError, match=r"'z' \(U\+007A\) at position 2"):
        tok.encode("hoz")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([8])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.train("")
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(b"hello")


def test_byte_ids_follow_gpt2_vocab_order():
    table = bytes_to_unicode()
    assert BYTE_ORDER[0] == ord("!") and BYTE_ORDER[188] == 0 and BYTE_ORDER[220] == ord(" ")
    assert sorted(BYTE_ORDER) == list(range(256))
    assert [BPE.id_to_token(i) for i in range(256)] == list(table.values())
    assert [BPE.id_to_token(i) for i in range(256)] == sorted(table.values())  # = code-point order (HF trainer)
    assert BPE.id_to_token(220) == "Ġ" and BPE.encode(" ") == [220] and BPE.encode("!") == [0]


def test_wikipedia_example_gives_the_hand_computed_merges():
    # "aaabdaaabac": (a,a)=4 -> Z; then (Z,a)=2 ties (a,b)=2: the smaller ids (a=64, b=65 < Z=256) win -> Y;
    # then (Z,Y)=2 -> X. Encoded: X d X a c.
    tok = ByteBPETokenizer.train("aaabdaaabac", 260)
    a, b, c, d = (BYTE_ORDER.index(ord(ch)) for ch in "abcd")
    assert tok.merges == [(a, a), (a, b), (256, 257)]
    assert [tok.token_bytes(i) for i in (256, 257, 258)] == [b"aa", b"ab", b"aaab"]
    assert tok.encode("aaabdaaabac") == [258, d, 258, a, c]
    assert tok.eot_id == 259 and tok.vocab_size == 260


def test_ties_break_to_the_smallest_pair_of_ids():
    # Chunks "ab" and " cd": three pairs of count 1. In GPT-2 order ' ' is id 220, after the letters,
    # so (a,b) < (c,d) < (' ',c); after cd = 257, (' ', cd) is the only pair left.
    tok = ByteBPETokenizer.train("ab cd", 300)
    assert [tok.id_to_token(i) for i in range(256, 259)] == ["ab", "cd", "Ġcd"]
    assert tok.vocab_size == 260 and tok.eot_id == 259  # ran out of pairs: a smaller vocabulary, eot still last


def test_training_is_deterministic_and_compresses():
    again = ByteBPETokenizer.train(CORPUS, 400)
    assert again.merges == BPE.merges and BPE.vocab_size == 400 and BPE.eot_id == 399
    n_bytes = len(CORPUS.encode())
    assert len(BPE.encode(CORPUS)) / n_bytes < 0.5
    big = ByteBPETokenizer.train(CORPUS, 1000)
    assert big.merges[:len(BPE.merges)] == BPE.merges  # a larger vocabulary only adds merges
    assert len(big.encode(CORPUS)) < len(BPE.encode(CORPUS))


def test_special_token_is_plain_text_unless_allowed():
    s = f"a{ENDOFTEXT}b"
    assert BPE.eot_id not in BPE.encode(s)
    assert BPE.encode(s, allowed_special="all") == BPE.encode("a") + [BPE.eot_id] + BPE.encode("b")
    assert BPE.encode(s, allowed_special={ENDOFTEXT}) == BPE.encode(s, allowed_special="all")
    assert BPE.decode([BPE.eot_id]) == ENDOFTEXT and BPE.id_to_token(BPE.eot_id) == ENDOFTEXT
    with pytest.raises(ValueError, match="allowed_special"):
        BPE.encode(s, allowed_special={"<|im_start|>"})


def test_save_load_round_trip(tmp_path):
    sample = CORPUS[:3000] + "\ud800 ünïcödé"
    for tok in (BPE, CharTokenizer.train(sample)):
        path = tok.save(tmp_path / f"{type(tok).__name__}.json")
        loaded = load_tokenizer(path)
        assert type(loaded) is type(tok) and loaded.to_dict() == tok.to_dict()
        assert loaded.encode(sample) == tok.encode(sample) and loaded.vocab_size == tok.vocab_size
        assert type(tok).load(path).to_dict() == tok.to_dict()
    BPE.save(tmp_path)  # a directory gets tokenizer.json
    assert (tmp_path / "tokenizer.json").is_file() and load_tokenizer(tmp_path).merges == BPE.merges


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "unknown tokenizer type"),
    ('{"type": "sentencepiece", "version": 1}', "unknown tokenizer type"),
    ('{"type": "char", "version": 2, "chars": ["a"]}', "version must be 1"),
    ('{"type": "char", "version": 1, "chars": ["a", "a"]}', "twice"),
    ('{"type": "char", "version": 1, "chars": ["ab"]}', "single characters"),
    ('{"type": "char", "version": 1}', "needs 'chars'"),
    ('{"type": "byte_bpe", "version": 1, "merges": [[0, 1]], "special_tokens": {"<|endoftext|>": 257}}', "pattern"),
])
def test_corrupt_tokenizer_files_fail_clearly(tmp_path, content, match):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_tokenizer(path)


@pytest.mark.parametrize("merges, special, match", [
    ([[0, 256]], 257, "merge 0 must be a pair of ids below 256"),
    ([[0, 1, 2]], 257, "merge 0 must be a pair"),
    ([[0, True]], 257, "merge 0 must be a pair"),
    ([[0, 1], [0, 1]], 258, "repeats merge 0"),
    ("0 1", 257, "needs 'merges'"),
    ([[0, 1]], 300, "special_tokens"),
])
def test_malformed_merges_fail_clearly(tmp_path, merges, special, match):
    d = {**BPE.to_dict(), "merges": merges, "special_tokens": {ENDOFTEXT: special}}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match):
        load_tokenizer(path)


def test_missing_file_and_train_tokenizer_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    assert isinstance(train_tokenizer("char", "abc"), CharTokenizer)
    assert train_tokenizer("bpe", "abc abc", 260).vocab_size <= 260
    with pytest.raises(ValueError, match="more than vocab_size=2"):
        train_tokenizer("char", "abc", 2)
    with pytest.raises(ValueError, match="vocab_size must be an int >= 257"):
        train_tokenizer("bpe", "abc", 256)
    with pytest.raises(ValueError, match="kind must be"):
        train_tokenizer("wordpiece", "abc")


# ---- Hugging Face `tokenizers` as an oracle (skipped when it is not installed) ----

TRICKY = ["Hello world", "a  b\n\n  c   ", "\t\t x\r\n", "I'm he'll they'd you've we're it's don't 'S 'LL",
          "12345 3.14 ٣٤ ½ x2", "héllo 世界 😀 Ωμέγα", "\u00a0 nbsp\u2028\x85", "\x1c\x1d\x1e\x1f", "e\u0301 ",
          "  leading", "trailing  ", "", " ", "<|endoftext|>", "def f(x):\n    return x**2  # ok\n"]


def hf_byte_level():
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def gpt2_chunks(s):
    table = bytes_to_unicode()
    return ["".join(table[b] for b in chunk.encode()) for chunk in pretokenize(s)]


@pytest.mark.parametrize("s", TRICKY)
def test_pretokenization_matches_hugging_face_byte_level(s):
    assert gpt2_chunks(s) == [piece for piece, _ in hf_byte_level().pre_tokenize_str(s)]


# Rust strings cannot hold surrogates; unassigned code points are left out because `regex` and Hugging Face's
# regex engine may ship different Unicode versions (they differ only on characters newer than Unicode 14).
@given(st.text(st.characters(codec="utf-8", exclude_categories=("Cn",))))
def test_pretokenization_matches_hugging_face_on_any_assigned_text(s):
    assert gpt2_chunks(s) == [piece for piece, _ in hf_byte_level().pre_tokenize_str(s)]


def test_byte_alphabet_and_training_match_hugging_face():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    assert sorted(hf_byte_level().alphabet()) == sorted(bytes_to_unicode().values())
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = hf_byte_level()
    hf.train_from_iterator([CORPUS], trainers.BpeTrainer(
        vocab_size=BPE.vocab_size, special_tokens=[ENDOFTEXT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False, min_frequency=0))
    model = json.loads(hf.to_str())["model"]
    hf_merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    assert hf_merges == [(BPE.id_to_token(a), BPE.id_to_token(b)) for a, b in BPE.merges]
    # HF puts the special token first; otherwise the ids agree, so the encodings differ by exactly 1.
    assert all(model["vocab"][BPE.id_to_token(i)] == i + 1 for i in range(BPE.eot_id))
    assert [i - 1 for i in hf.encode(CORPUS[:5000]).ids] == BPE.encode(CORPUS[:5000])
