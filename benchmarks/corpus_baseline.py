"""Unigram baseline of a corpus: the cross-entropy (nats/token) of the validation split under the training
split's token frequencies (add-one smoothed), the bar a language model must beat.

    python benchmarks/corpus_baseline.py                    # the default corpus, char tokenizer
    python benchmarks/corpus_baseline.py --tokenizer=bpe --vocab_size=1024
"""

import argparse
import math
import tempfile

import numpy as np

from scratchllm.data import load_text, prepare_tokens
from scratchllm.tokenizer import train_tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="stdlib")
    ap.add_argument("--tokenizer", default="char", choices=("char", "bpe"))
    ap.add_argument("--vocab_size", type=int, default=None)
    args = ap.parse_args()
    text, description = load_text(args.data)
    tok = train_tokenizer(args.tokenizer, text, args.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        train, val = prepare_tokens(text, tok, tmp)
        counts = np.bincount(np.asarray(train), minlength=tok.vocab_size) + 1.0
        logp = np.log(counts / counts.sum())
        ce = -float(logp[np.asarray(val)].mean())
    print(f"{description}, {args.tokenizer} tokenizer ({tok.vocab_size} tokens): unigram cross-entropy on val "
          f"{ce:.4f} nats/token ({ce / math.log(2):.3f} bits); uniform {math.log(tok.vocab_size):.4f}")


if __name__ == "__main__":
    main()
