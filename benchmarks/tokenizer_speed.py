"""Time tokenizer training and encoding on ~2 MB of the Python standard library's own source.

    python benchmarks/tokenizer_speed.py                      # BPE at vocab 512 and 2048, and the char tokenizer
    python benchmarks/tokenizer_speed.py --mb 5 --vocab 4096 --json out.json

The corpus is the default training corpus (``scratchllm.data.load_text("stdlib")``): the stdlib's .py files in
sorted path order, test directories skipped, whole files until the size is reached, so every machine with the
same Python gets the same text.
Encoding is timed on the training text with a cold cache (a fresh tokenizer), then again warm.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from scratchllm.data import load_text
from scratchllm.tokenizer import ByteBPETokenizer, CharTokenizer

def stdlib_text(n_bytes: int) -> str:
    """The default training corpus: stdlib ``.py`` files in sorted order, tests skipped, up to ``n_bytes``."""
    return load_text("stdlib", n_bytes)[0]


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def measure(name, make, text):
    n_bytes = len(text.encode("utf-8", errors="surrogatepass"))
    tok, train_s = timed(make)
    _, cold_s = timed(tok.encode, text)
    ids, warm_s = timed(tok.encode, text)
    decoded, decode_s = timed(tok.decode, ids)
    assert decoded == text, f"{name}: decode(encode(text)) != text"
    return {"tokenizer": name, "vocab_size": tok.vocab_size, "train_s": round(train_s, 3),
            "encode_cold_MB_s": round(n_bytes / cold_s / 1e6, 2), "encode_warm_MB_s": round(n_bytes / warm_s / 1e6, 2),
            "decode_MB_s": round(n_bytes / decode_s / 1e6, 2), "tokens_per_byte": round(len(ids) / n_bytes, 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=2.0, help="corpus size in MB (default 2)")
    ap.add_argument("--vocab", type=int, nargs="+", default=[512, 2048], help="BPE vocabulary sizes")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    text = stdlib_text(int(args.mb * 1e6))
    n_bytes = len(text.encode())
    print(f"corpus: {n_bytes / 1e6:.2f} MB of Python {platform.python_version()} stdlib source, "
          f"{len(set(text))} distinct characters")
    rows = [measure("char", lambda: CharTokenizer.train(text), text)]
    for v in args.vocab:
        rows.append(measure(f"bpe-{v}", lambda v=v: ByteBPETokenizer.train(text, v), text))
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if args.json:
        meta = {"python": sys.version.split()[0], "machine": platform.machine(), "corpus_bytes": n_bytes}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
