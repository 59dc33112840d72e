"""Plots for ``scratchllm bench --plots DIR`` (matplotlib, the ``plot`` extra): time vs size from the ``sweep``
rows (ours and torch, CPU and GPU, forward and backward) and a roofline per device from the measured peaks."""

from __future__ import annotations

import os

import numpy as np


def _size(r):
    """x of the time-vs-size plot: forward FLOPs for the matmul ops, elements of the activation otherwise."""
    if r.get("flops") and r["op"] in ("linear", "attention"):
        return r["flops"]["fwd"], "forward FLOPs"
    s = r["sizes"]
    if r["op"] == "embedding":
        return s["B"] * s["T"] * s["C"], "output elements"
    return int(np.prod(list(s.values()))), "elements"


def make_plots(result, out_dir) -> list:
    """Write ``time_vs_size.png`` (when sweep rows exist) and ``roofline.png``; returns the paths written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import sys
        print("scratchllm bench: matplotlib is not installed (pip install 'scratchllm[plot]'): no plots",
              file=sys.stderr)
        return []
    os.makedirs(out_dir, exist_ok=True)
    rows = [r for r in result.get("ops", []) if r["check"]["ok"]]
    paths = []
    sweep = [r for r in rows if r["shapes"] == "sweep"]
    if sweep:
        names = list(dict.fromkeys(r["op"] for r in sweep))
        ncol, nrow = 3, (len(names) + 2) // 3
        fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.6 * nrow), squeeze=False)
        for ax, name in zip(axes.flat, names):
            rs = [r for r in sweep if r["op"] == name]
            for backend in dict.fromkeys(r["backend"] for r in rs):
                sub = sorted((r for r in rs if r["backend"] == backend), key=lambda r: _size(r)[0])
                x = [_size(r)[0] for r in sub]
                tdev = "torch " + ("CUDA" if backend == "cupy" else "CPU")
                for k, style in (("fwd", "-"), ("bwd", "--")):
                    ax.plot(x, [r[k]["median_ms"] for r in sub], style, marker="o", label=f"{backend} {k}")
                    tt = [(xi, r["torch"][k]["median_ms"]) for xi, r in zip(x, sub) if r["torch"] and r["torch"][k]]
                    if tt:
                        ax.plot(*zip(*tt), style, marker="x", label=f"{tdev} {k}")
            ax.set(xscale="log", yscale="log", title=name, xlabel=_size(rs[0])[1], ylabel="ms (median)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.suptitle(f"time vs size ({result['dtype']}; {result['env']['cpu']})", fontsize=9)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "time_vs_size.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    devices = [d for d in ("cpu", "gpu") if d in result["peaks"]]
    if rows and devices:
        fig, axes = plt.subplots(1, len(devices), figsize=(7.5 * len(devices), 5.5), squeeze=False)
        for ax, dev in zip(axes.flat, devices):
            p = result["peaks"][dev]
            ai = np.logspace(-2, 3, 200)
            ax.plot(ai, np.minimum(p["peak_gflops"], ai * p["peak_gbs"]), "k-", lw=1.5,
                    label=f"roof: {p['peak_gflops']:.0f} GFLOP/s, {p['peak_gbs']:.1f} GB/s")
            shape_set = "gpt2-small" if any(r["shapes"] == "gpt2-small" for r in rows) else rows[0]["shapes"]
            pts = [r for r in rows if r["device"] == dev and r["shapes"] == shape_set and r.get("flops")]
            for r in pts:
                for k, marker in (("fwd", "o"), ("bwd", "^")):
                    if not r["flops"][k] or not r["bytes"][k]:
                        continue
                    x = r["flops"][k] / r["bytes"][k]
                    ax.scatter(x, r["gflops"][k], marker=marker, color="C0", s=25)
                    ax.annotate(f"{r['op']} {k}", (x, r["gflops"][k]), fontsize=6)
                    tt = r["torch"] and r["torch"].get(k)
                    if tt:
                        ax.scatter(x, r["flops"][k] / (tt["median_ms"] / 1e3) / 1e9, marker=marker, color="C3", s=25)
            ax.scatter([], [], color="C0", label="scratchllm (o fwd, ^ bwd)")
            ax.scatter([], [], color="C3", label="torch")
            ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / compulsory byte)",
                   ylabel="GFLOP/s", title=f"roofline, {dev.upper()}, shapes {shape_set}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "roofline.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
