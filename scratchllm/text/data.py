"""Corpus loading, token arrays cached as .npy (read back with memmap), and seeded random batches.

The default corpus is the Python standard library's own source, found at run time, so ``scratchllm train``
works offline on any machine with Python: its ``.py`` files in sorted path order, tests and vendored or
generated directories left out, up to a size cap.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from pathlib import Path

import numpy as np

DEFAULT_CORPUS = "stdlib"
DEFAULT_CAP_BYTES = 3_000_000
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3",
             "ensurepip", "_vendor", "turtledemo", "pydoc_data", "encodings"}


def stdlib_files(cap_bytes: int = DEFAULT_CAP_BYTES) -> list:
    """The standard library's ``.py`` files in a deterministic order, until ``cap_bytes`` of source."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"the Python standard library was not found at {root}")
    files, total = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("test"))
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            path = Path(dirpath) / name
            size = path.stat().st_size
            if total + size > cap_bytes:
                return files
            files.append(path)
            total += size
    return files


def _read_text(path: Path) -> str | None:
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        return None  # binary: not text
    return raw.decode("utf-8", errors="replace")


def load_text(data: str = DEFAULT_CORPUS, cap_bytes: int = DEFAULT_CAP_BYTES) -> tuple[str, str]:
    """``(text, description)`` from ``data``: "stdlib" (the default corpus), a text file, or a directory of
    text files (recursive, sorted, binary files skipped)."""
    if data == DEFAULT_CORPUS:
        files = stdlib_files(cap_bytes)
        text = "".join(_read_text(p) or "" for p in files)
        return text, f"Python {sysconfig.get_python_version()} standard library ({len(files)} files)"
    path = Path(data).expanduser()
    if path.is_file():
        text = _read_text(path)
        if text is None:
            raise ValueError(f"data file {path} is binary, not text")
        return text, str(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.parts))
        texts = [t for t in (_read_text(p) for p in files) if t]
        if not texts:
            raise ValueError(f"data directory {path} holds no text files")
        return "".join(texts), f"{path} ({len(texts)} files)"
    raise FileNotFoundError(f"data path {data} does not exist")


def token_dtype(vocab_size: int):
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def prepare_tokens(text: str, tokenizer, cache_dir, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Encode ``text``, split it (the last ``val_fraction`` is validation, as nanoGPT does), cache both halves
    as ``.npy`` under ``cache_dir`` (keyed by a hash of the text and the tokenizer) and return them memory-mapped.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction!r}")
    cache_dir = Path(cache_dir)
    key = hashlib.sha256(text.encode("utf-8", errors="surrogatepass"))
    key.update(json.dumps(tokenizer.to_dict(), sort_keys=True).encode())
    key.update(repr(val_fraction).encode())
    stem = cache_dir / f"tokens-{key.hexdigest()[:16]}"
    train_path, val_path = Path(f"{stem}-train.npy"), Path(f"{stem}-val.npy")
    if not (train_path.is_file() and val_path.is_file()):
        ids = np.asarray(tokenizer.encode(text), dtype=token_dtype(tokenizer.vocab_size))
        n_val = int(len(ids) * val_fraction)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for path, part in ((train_path, ids[: len(ids) - n_val]), (val_path, ids[len(ids) - n_val:])):
            tmp = path.with_suffix(f".tmp-{os.getpid()}.npy")
            np.save(tmp, part)
            os.replace(tmp, path)
    return np.load(train_path, mmap_mode="r"), np.load(val_path, mmap_mode="r")


def get_batch(tokens: np.ndarray, batch_size: int, block_size: int, rng: np.random.Generator, mask=None):
    """Random windows: ``x = tokens[i : i+T]``, ``y = tokens[i+1 : i+T+1]`` for B offsets i from ``rng``.

    Returns int64 arrays (B, T) on the host. ``mask`` (bool, as long as ``tokens``; prompt/response pairs,
    ``pairs.py``): a target whose token is not a response token (``mask`` False there) becomes -1, ignored.
    """
    n = len(tokens) - block_size
    if n < 1:
        raise ValueError(f"the token array has {len(tokens)} tokens; it needs more than block_size={block_size}")
    ix = rng.integers(0, n, size=batch_size)  # (B,)
    offsets = ix[:, None] + np.arange(block_size + 1)[None, :]  # (B, T+1)
    window = np.asarray(tokens[offsets.ravel()], dtype=np.int64).reshape(batch_size, block_size + 1)
    if mask is None:
        return window[:, :-1], window[:, 1:]
    keep = np.asarray(mask[offsets[:, 1:].ravel()], dtype=bool).reshape(batch_size, block_size)
    return window[:, :-1], np.where(keep, window[:, 1:], -1)
