"""How much repeated runs of the same ``scratchllm bench`` command differ, and whether their stated intervals say so.

    python benchmarks/repeat_spread.py RUN1.json RUN2.json RUN3.json [...]

For every op row and side (ours, torch) and direction: the medians of the runs and their spread
((max - min) / median), and whether the runs' stated uncertainties share a value (the 95 % intervals; for a
schema-1 result, which had none, median +- IQR); then the same for the ours/torch ratios (schema 2). A bench
whose intervals are honest has few rows whose intervals do not meet, and flags those it has.
"""

from __future__ import annotations

import json
import statistics
import sys


def interval(t):
    if t.get("ci95_ms"):
        return t["ci95_ms"]
    return [t["median_ms"] - t["iqr_ms"], t["median_ms"] + t["iqr_ms"]]  # schema 1: no interval


def meet(intervals):
    return max(lo for lo, _ in intervals) <= min(hi for _, hi in intervals)


def main(paths):
    runs = [json.load(open(p)) for p in paths]
    first = runs[0]
    print(f"{len(runs)} runs of `{first['command']}`, commit {first['env'].get('git_commit')}\n")
    print("| op | side | dir | medians (ms) | spread | intervals meet | flags in every run |")
    print("|---|---|---|---|---|---|---|")
    n = met = flagged = 0
    for j, row in enumerate(first["ops"]):
        for side in ("ours", "torch"):
            for k in ("fwd", "bwd"):
                ts = [(r["ops"][j] if side == "ours" else r["ops"][j].get("torch") or {}).get(k) for r in runs]
                if not all(ts):
                    continue
                meds = [t["median_ms"] for t in ts]
                ok = meet([interval(t) for t in ts])
                every = all(t.get("flags") for t in ts)
                n, met = n + 1, met + ok
                flagged += (not ok) and every
                print(f"| {row['op']} | {side} | {k} | {' / '.join(f'{m:.3g}' for m in meds)} | "
                      f"{100 * (max(meds) - min(meds)) / statistics.median(meds):.0f} % | {'yes' if ok else 'NO'} | "
                      f"{'yes' if every else ''} |")
    print(f"\n{met} of {n} timings: the runs' intervals meet; of the {n - met} others, {flagged} flagged in every run")
    if all(r.get("schema", 1) >= 2 for r in runs):
        ratios = [(row["op"], k, [r["ops"][j]["ratio_torch_ci"][k] for r in runs],
                   [r["ops"][j]["ratio_torch"][k] for r in runs])
                  for j, row in enumerate(first["ops"]) for k in ("fwd", "bwd", "total")
                  if all(r["ops"][j].get("ratio_torch_ci", {}).get(k) for r in runs)]
        print(f"{sum(meet(iv) for _, _, iv, _ in ratios)} of {len(ratios)} ours/torch ratios: the runs' intervals "
              f"meet")
        for op, k, iv, vals in ratios:
            print(f"- {op} {k}: {' / '.join(f'{v:.2f} ({lo:.2f}-{hi:.2f})' for v, (lo, hi) in zip(vals, iv))}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1:])
