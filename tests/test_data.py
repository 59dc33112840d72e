"""Corpus loading (the stdlib default corpus, files, directories), the token cache and batches."""

import numpy as np
import pytest

from scratchllm.data import get_batch, load_text, prepare_tokens, stdlib_files, token_dtype
from scratchllm.tokenizer import train_tokenizer


def test_default_corpus_is_deterministic_capped_and_has_no_tests():
    files = stdlib_files(400_000)
    assert files == stdlib_files(400_000) and files
    assert sum(f.stat().st_size for f in files) <= 400_000
    assert all(f.suffix == ".py" and "test" not in f.parts and not f.name.startswith("test_") for f in files)
    text, description = load_text("stdlib", 200_000)
    assert "standard library" in description and "def " in text and len(text) <= 200_000


def test_text_file_and_recursive_directory(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("alpha\n", encoding="utf-8")
    (tmp_path / "b" / "c.md").write_text("gamma\n", encoding="utf-8")
    (tmp_path / "b" / "blob.bin").write_bytes(b"\x00\x01binary")
    (tmp_path / ".hidden").write_text("secret", encoding="utf-8")
    text, _ = load_text(str(tmp_path))
    assert text == "alpha\ngamma\n"
    assert load_text(str(tmp_path / "a.txt"))[0] == "alpha\n"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="binary"):
        load_text(str(tmp_path / "b" / "blob.bin"))


def test_tokens_are_cached_as_uint16_memmaps_and_split(tmp_path):
    text = "hello world, " * 200
    tok = train_tokenizer("char", text)
    train, val = prepare_tokens(text, tok, tmp_path)
    assert isinstance(train, np.memmap) and train.dtype == np.uint16
    assert len(val) == int(len(text) * 0.1) and len(train) + len(val) == len(text)
    assert tok.decode(np.concatenate([train, val]).tolist()) == text
    files = sorted(p.name for p in tmp_path.iterdir())
    train2, _ = prepare_tokens(text, tok, tmp_path)  # the second call reads the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == files and np.array_equal(train, train2)
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_batches_are_shifted_windows_from_a_seeded_rng():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(tokens, 4, 8, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(x[:, 1:], x[:, :-1] + 1)
    x2, _ = get_batch(tokens, 4, 8, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)
    with pytest.raises(ValueError, match="needs more than block_size"):
        get_batch(tokens[:8], 2, 8, np.random.default_rng(0))
