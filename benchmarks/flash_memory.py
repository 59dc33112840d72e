"""Flash attention's memory and time over T, against the whole-matrix attention and torch's SDPA (CPU, float32).

    python benchmarks/flash_memory.py [--T 256 512 1024 2048 4096] [--heads 4] [--out benchmarks/results]

Each (implementation, T) runs in a fresh process: causal attention forward + backward at B1 H``heads`` D64, the
dispatched ops (our fastest registered implementation of each). A first forward + backward at T = 64 loads and
compiles what it needs; then memory: the process's peak resident size during one forward + backward at T minus
its peak before (``ru_maxrss``: counts NumPy's and torch's allocations alike), and for ours tracemalloc's peak
(NumPy reports to it). Time: the median of 3 more. Writes ``flash_attention.json``, ``flash_attention.md`` and ``flash_attention.png`` (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

IMPLS = ("flash", "whole", "torch")


def worker(impl, T, heads):
    import resource
    import time
    import tracemalloc

    import numpy as np

    from scratchllm.backend import tune_host_allocator

    tune_host_allocator()  # as scratchllm's GPT runs (freed blocks reused, not faulted in afresh)
    rng = np.random.default_rng(0)

    def make_step(T):
        q, k, v, d = (rng.standard_normal((1, heads, T, 64)).astype(np.float32) for _ in range(4))
        if impl == "torch":
            import torch

            tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
            td = torch.from_numpy(d)

            def step():
                o = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
                torch.autograd.grad(o, (tq, tk, tv), td)
            return step
        from scratchllm.kernels import dispatch

        fwd, bwd = ((dispatch.flash_attention_forward, dispatch.flash_attention_backward) if impl == "flash" else
                    (dispatch.attention_forward, dispatch.attention_backward))

        def step():
            out, cache = fwd(q, k, v)
            bwd(d, cache)
        return step

    make_step(64)()  # imports, first compiles, thread pools
    step = make_step(T)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    step()
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"impl": impl, "T": T, "heads": heads, "rss_mib": (peak - before) / 1024,
            "traced_mib": traced / 2**20 if impl != "torch" else None, "ms": 1e3 * statistics.median(times)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--replot", action="store_true", help="only redraw the plot from --out's flash_attention.json")
    args = p.parse_args(argv)
    if args.replot:
        return replot(args.out)
    rows = []
    for T in args.T:
        for impl in IMPLS:
            done = subprocess.run([sys.executable, __file__, "--worker", impl, str(T), str(args.heads)],
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{impl} at T={T} failed: {done.stderr.strip().splitlines()[-1:]}")
            rows.append(json.loads(done.stdout))
            print(rows[-1], file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "flash_attention.json"), "w") as f:
        json.dump({"command": "python benchmarks/flash_memory.py " + " ".join(argv or sys.argv[1:]), "rows": rows},
                  f, indent=1)
    by = {(r["impl"], r["T"]): r for r in rows}
    lines = [f"Causal attention forward + backward, B1 H{args.heads} D64 float32, each in a fresh process: extra "
             "peak memory (MiB, resident; tracemalloc's in brackets) and time (ms, median of 3).", "",
             "| T | flash MiB | whole-matrix MiB | torch SDPA MiB | flash ms | whole-matrix ms | torch SDPA ms |",
             "|---|---|---|---|---|---|---|"]
    for T in args.T:
        f, w, t = by["flash", T], by["whole", T], by["torch", T]
        lines.append(f"| {T} | {f['rss_mib']:.1f} [{f['traced_mib']:.1f}] | {w['rss_mib']:.1f} [{w['traced_mib']:.1f}]"
                     f" | {t['rss_mib']:.1f} | {f['ms']:.1f} | {w['ms']:.1f} | {t['ms']:.1f} |")
    with open(os.path.join(args.out, "flash_attention.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(by, args.T, os.path.join(args.out, "flash_attention.png"))


def plot(by, Ts, path):
    """Memory and time over T, log-log, one line per implementation (needs matplotlib; skipped without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    names = {"flash": "flash attention (ours)", "whole": "whole-matrix attention (ours)", "torch": "torch SDPA"}
    for impl in IMPLS:
        xs = [T for T in Ts if (impl, T) in by]
        a.plot(xs, [by[impl, T]["traced_mib"] if impl != "torch" else by[impl, T]["rss_mib"] for T in xs], "o-",
               label=names[impl])
        b.plot(xs, [by[impl, T]["ms"] for T in xs], "o-", label=names[impl])
    a.set(ylabel="extra peak memory, MiB", title="memory (ours: tracemalloc; torch: resident)")
    b.set(ylabel="forward + backward, ms", title="time (B1 H4 D64 float32, causal)")
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(Ts, [str(T) for T in Ts])
        ax.minorticks_off()
        ax.set_xlabel("T")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def replot(out):
    """The plot again from an earlier run's flash_attention.json."""
    with open(os.path.join(out, "flash_attention.json")) as f:
        rows = json.load(f)["rows"]
    by = {(r["impl"], r["T"]): r for r in rows}
    plot(by, sorted({r["T"] for r in rows}), os.path.join(out, "flash_attention.png"))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        json.dump(worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])), sys.stdout)
    else:
        main()
