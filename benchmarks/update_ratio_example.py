"""The worked example of docs/inspect.md: two short runs of the default model with ``--stats``, one at the default
learning rate (2e-3) and one ten times higher, and a figure of their update-to-data ratios and losses.

    python benchmarks/update_ratio_example.py [--iters 300] [--out docs/images/update_ratio.png]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def run(lr: float, iters: int, out: Path) -> list:
    subprocess.run([sys.executable, "-m", "scratchllm", "train", f"--learning_rate={lr}", f"--min_lr={lr / 10}",
                    f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--stats", "--stats_interval=10",
                    "--eval_interval=100", "--eval_iters=10", "--sample_tokens=0", "--progress=false",
                    f"--out_dir={out}"], check=True, capture_output=True)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--out", default="docs/images/update_ratio.png")
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    with tempfile.TemporaryDirectory() as tmp:
        for lr, color in ((2e-3, "tab:blue"), (2e-2, "tab:red")):
            rows = run(lr, a.iters, Path(tmp) / f"lr{lr}")
            stats = [r for r in rows if "stats" in r]
            weights = [n for n, v in stats[0]["stats"].items() if "update_ratio" in v and n.endswith("weight")
                       and ("c_attn" in n or "c_fc" in n or "c_proj" in n)]  # the 2-D matrices
            steps = [r["step"] for r in stats]
            med = [np.median([r["stats"][n]["update_ratio"] for n in weights]) for r in stats]
            left.plot(steps, med, color=color, label=f"lr {lr:g}: median over the block matrices")
            losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
            right.plot(*zip(*losses), color=color, alpha=0.7, label=f"lr {lr:g}")
            val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
            print(f"lr {lr:g}: median update ratio at the end {med[-1]:.2e}, val loss {val[-1][1]:.3f}")
    left.axhline(1e-3, color="k", ls="--", lw=1, label="1e-3")
    left.set(yscale="log", xlabel="step", ylabel="|lr * update| / |param|", title="update-to-data ratio")
    right.set(xlabel="step", ylabel="training loss (nats/char)", title="loss")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.out, dpi=100)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
