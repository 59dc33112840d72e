"""A training run's metrics file (``metrics.jsonl``: one JSON row per logged step and per evaluation) and its
plot (``loss.png``, with matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows a resumed run will write again (training rows from ``step`` on, eval rows after it)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a row cut short by a kill
        if row.get("step", 0) < step or (row.get("step") == step and "val_loss" in row):
            keep.append(line)
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def plot_metrics(metrics_path: Path, png: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train (batch)", alpha=0.6)
    if val:
        ax.plot(*zip(*val), "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True
