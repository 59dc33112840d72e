"""Check a bench run's ours/torch ratios against the same comparison timed by other clocks, in separate processes.

    python benchmarks/check_ratios.py RESULT.json [--ops layernorm gelu] [--processes 3] [--min-time 1.0]

For every CPU row of RESULT.json (``scratchllm bench --json``) with a torch ratio, each side is timed again in
fresh processes of its own, alternating (ours, torch, torch, ours, ...), with clocks that are not the bench's:
ours with the standard library's ``timeit`` (``autorange``, then ``repeat``), torch with
``torch.utils.benchmark.Timer.blocked_autorange`` at torch's own thread count (its default is one thread). Both
processes tune the host allocator as the bench's workers do (scratchllm's GPT does it for itself), and use the
bench's inputs (the registry's ``make_inputs``, seed 0) and dout. Each process pair gives a ratio; the check
passes when the range of those ratios overlaps the bench's 95 % interval.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys


def time_side(side, op_name, sizes, dtype, min_time):
    """In a worker: median seconds per call of the forward and the backward of one side."""
    import numpy as np

    from scratchllm.backend import tune_host_allocator
    from scratchllm.ops import OPS

    tune_host_allocator()
    op = OPS[op_name]
    host = op.make_inputs(sizes, dtype=dtype, seed=0)
    if side == "ours":
        import timeit

        from scratchllm.kernels.dispatch import dispatched

        forward, backward = dispatched(op.forward), dispatched(op.backward)
        out, cache = forward(*host)
        dout = np.random.default_rng(1).standard_normal(np.shape(out)).astype(dtype)
        result = {}
        for k, fn in (("fwd", lambda: forward(*host)), ("bwd", lambda: backward(dout, cache))):
            timer = timeit.Timer(fn)
            number, t = timer.autorange()  # calls per sample for at least 0.2 s
            repeat = max(5, int(min_time / max(t, 1e-9)))
            result[k] = statistics.median(timer.repeat(repeat=repeat, number=number)) / number
        return result
    import torch
    import torch.utils.benchmark as tb

    from scratchllm.bench.torch_ref import TORCH_OPS

    fn = TORCH_OPS[op_name]
    tin = [torch.from_numpy(a) for a in host]
    tin = [t.requires_grad_() if t.is_floating_point() else t for t in tin]
    leaves = [t for t in tin if t.requires_grad]
    out = fn(*tin)
    dout = torch.from_numpy(np.random.default_rng(1).standard_normal(tuple(out.shape)).astype(dtype))
    threads = torch.get_num_threads()
    result = {}
    for k, stmt in (("fwd", lambda: fn(*tin)), ("bwd", lambda: torch.autograd.grad(out, leaves, dout,
                                                                                   retain_graph=True))):
        m = tb.Timer("f()", globals={"f": stmt}, num_threads=threads).blocked_autorange(min_run_time=min_time)
        result[k] = m.median
    return result


def run_worker(side, op, sizes, dtype, min_time):
    done = subprocess.run([sys.executable, __file__, "--worker", side, op, json.dumps(sizes), dtype, str(min_time)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side} worker for {op} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("result")
    p.add_argument("--ops", nargs="+")
    p.add_argument("--processes", type=int, default=3, help="process pairs per row (default 3)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of samples per measurement")
    args = p.parse_args(argv)
    with open(args.result) as f:
        result = json.load(f)
    rows = [r for r in result.get("ops", []) if r["backend"] == "numpy" and r.get("ratio_torch_ci", {}).get("fwd")
            and not r.get("impl_forced") and (not args.ops or r["op"] in args.ops)]
    print(f"bench run: {result['command']} (commit {result['env'].get('git_commit')})\n")
    print("| op | sizes | dir | bench ours/torch (95 % interval) | separate processes, other clocks: ratio "
          "(range of process pairs) | overlap |")
    print("|---|---|---|---|---|---|")
    agree = total = 0
    for r in rows:
        pairs = []
        for i in range(args.processes):
            order = ("ours", "torch") if i % 2 == 0 else ("torch", "ours")
            t = {side: run_worker(side, r["op"], r["sizes"], r["dtype"], args.min_time) for side in order}
            pairs.append({k: t["ours"][k] / t["torch"][k] for k in ("fwd", "bwd")}
                         | {"total": (t["ours"]["fwd"] + t["ours"]["bwd"]) / (t["torch"]["fwd"] + t["torch"]["bwd"])})
        sizes = " ".join(f"{k}{v}" for k, v in r["sizes"].items())
        for k in ("fwd", "bwd", "total"):
            lo, hi = r["ratio_torch_ci"][k]
            mine = [pr[k] for pr in pairs]
            ok = min(mine) <= hi and max(mine) >= lo
            agree, total = agree + ok, total + 1
            print(f"| {r['op']} | {sizes} | {k} | {r['ratio_torch'][k]:.2f} ({lo:.2f}-{hi:.2f}) | "
                  f"{statistics.median(mine):.2f} ({min(mine):.2f}-{max(mine):.2f}) | {'yes' if ok else 'NO'} |")
    print(f"\n{agree} of {total} ratios overlap")
    return 0 if agree == total else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        side, op, sizes, dtype, min_time = sys.argv[2:7]
        json.dump(time_side(side, op, json.loads(sizes), dtype, float(min_time)), sys.stdout)
    else:
        sys.exit(main())
