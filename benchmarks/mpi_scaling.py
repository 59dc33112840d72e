"""Training-step time of the nanoGPT CPU recipe (``--preset=cpu``) on 1 core, on every core in one process
(the batch's shards in threads), and as N MPI ranks: the scaling table of docs/parallel.md.

    python benchmarks/mpi_scaling.py --runs 3 --iters 200 [--ranks 2]

The setups run alternately (run 1 of each, then run 2 of each, ...), so the machine's drift spreads over all of
them. A run's time is the median over its logged intervals (``metrics.jsonl``'s ``tokens_per_s``, every
``log_interval`` steps, the first interval left out), in ms per step of 12 x 64 tokens; a setup's is the median
over its runs, with the runs' range.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TOKENS = 12 * 64  # the cpu preset's batch_size x block_size


def setups(ranks: int) -> dict:
    one_core = {k: "1" for k in ("SCRATCHLLM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                 "NUMBA_NUM_THREADS")}
    return {"1 process, 1 core": (["--nproc=1"], one_core),
            f"1 process, {os.cpu_count()} cores (threads)": (["--nproc=1"], {}),
            f"{ranks} MPI ranks": ([f"--nproc={ranks}"], {})}


def run_once(args, env, iters) -> float:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "scratchllm", "train", "--preset=cpu", f"--max_iters={iters}",
               f"--lr_decay_iters={iters}", "--eval_interval=100000", "--eval_iters=1", "--sample_tokens=0",
               "--progress=false", f"--out_dir={out}", *args]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **env})
        rows = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
        rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]
    return statistics.median(TOKENS / rate * 1e3 for rate in rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--ranks", type=int, default=os.cpu_count())
    a = ap.parse_args()
    table = setups(a.ranks)
    times = {name: [] for name in table}
    for r in range(a.runs):
        for name, (args, env) in table.items():
            times[name].append(run_once(args, env, a.iters))
            print(f"run {r + 1}: {name}: {times[name][-1]:.1f} ms/step", file=sys.stderr, flush=True)
    base = statistics.median(times["1 process, 1 core"])
    print("| setup | ms/step (median of runs) | range over runs | speed-up over 1 core |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.1f} | {min(ts):.1f}-{max(ts):.1f} | {base / med:.2f} |")


if __name__ == "__main__":
    main()
