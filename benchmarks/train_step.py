"""Time one training step (forward + backward + AdamW) of scratchllm against PyTorch eager, same model.

This now lives in the package as ``scratchllm bench --suite train`` (``scratchllm/bench/train.py``); this
script is kept as a shortcut and passes its arguments on:

    python benchmarks/train_step.py                         # both configs: cpu, shakespeare-char
    python benchmarks/train_step.py --configs cpu --rounds 11 --json out.json
"""

import sys

from scratchllm.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "train", *sys.argv[1:]]))
