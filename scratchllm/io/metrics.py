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


def plot_stats(metrics_path: Path, png: Path) -> bool:
    """``stats.png`` from the ``"stats"`` rows of ``train --stats``: each parameter's update-to-data ratio over the
    steps on a log scale, with the customary 1e-3 guide, and each layer's gradient norm (its parameters' together).
    False (nothing written) without matplotlib or without stats rows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if "stats" in r]
    if not rows:
        return False
    params = [k for k, v in rows[0]["stats"].items() if "update_ratio" in v]
    steps = [r["step"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    colors, labelled = {"norm gains, LayerNorm biases": "tab:green", "embeddings": "tab:purple", "attention": "tab:blue", "MLP": "tab:orange",
                        "head": "tab:red"}, set()
    for name in params:  # one colour per kind of parameter, one legend entry per kind
        kind = ("norm gains, LayerNorm biases" if "ln" in name or "norm" in name else "embeddings" if "wte" in name or "wpe" in name or
                "embed" in name else "attention" if "attn" in name else "MLP" if "mlp" in name else "head")
        ratios = [r["stats"][name]["update_ratio"] for r in rows]  # None where the parameter was all zeros
        left.plot(steps, [float("nan") if v is None else v for v in ratios], lw=1, color=colors[kind], alpha=0.6,
                  label=None if kind in labelled else kind)
        labelled.add(kind)
    left.axhline(1e-3, color="k", ls="--", lw=1, label="1e-3")
    left.set(yscale="log", xlabel="step", ylabel="|p_after - p_before| / |p_before|",
             title="update-to-data ratio per parameter")
    layers = {}  # layer name -> the sum of its parameters' squared gradient norms, per row
    for name in params:
        parts = name.split(".")
        layer = next((f"layer {p}" for p in parts if p.isdigit()), "embeddings and head")
        layers.setdefault(layer, []).append(name)
    for layer, names in layers.items():
        right.plot(steps, [sum(r["stats"][n]["grad_norm"] ** 2 for n in names) ** 0.5 for r in rows], label=layer)
    right.set(yscale="log", xlabel="step", ylabel="gradient norm", title="gradient norm per layer")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True
