"""Each side of a comparison timed in processes of its own (pyperf's and asv's practice).

Timed in one process, ours and torch disturb each other: NumPy's BLAS threads and torch's OpenMP threads spin
after their last call and steal the other side's cores (a torch layernorm measured 8 ms instead of 50 us in
3 of 7 trials). So ``scratchllm bench`` checks every case in its own process, then times each side in a fresh
worker process that imports only what that side needs (``ours`` never imports torch), ``processes`` times per
side, the sides alternating (ours, torch; torch, ours; ...). A case's samples from all of a side's processes are
pooled into one summary; ``process_medians_ms`` keeps each process's median, so drift between processes shows.

The worker is ``python -m scratchllm.bench.isolate``: a JSON request on stdin (``side``, ``cases``, ``timing``),
the summaries as JSON on stdout.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import numpy as np

from .timing import l2_flusher, mark_launch_bound, measure, summarize

SIDES = ("ours", "torch")


def implementation(op, name, inputs, make_dout):
    """What a row of implementation ``name`` times, on ``inputs``: ``(forward, backward, out, cache, dout, ran)``.
    None: what the model runs (the dispatch); "reference": the textbook; else that registered implementation
    wherever its rules take the inputs (an implementation of one direction only has the textbook's other).
    ``make_dout(out)`` makes the backward's dout; ``ran``: ``{"fwd": name, "bwd": name}`` of what ran."""
    from .. import kernels
    from ..kernels.dispatch import bind_like, dispatched
    from ..kernels.registry import pick_backward

    keywords = getattr(op.forward, "keywords", {})
    if name is None:
        forward, backward = dispatched(op.forward), dispatched(op.backward)
        out, cache = forward(*inputs)
        dout = make_dout(out)
        return forward, backward, out, cache, dout, {
            "fwd": kernels.select(op.family, *inputs, **keywords),
            "bwd": getattr(pick_backward(op.family, dout, cache), "name", kernels.REFERENCE)}
    impl = kernels.implementations(op.family).get(name)
    fwd_ok = impl is not None and impl.supports(*inputs, **keywords)
    forward = bind_like(op.forward, impl.forward) if fwd_ok else op.forward
    out, cache = forward(*inputs)
    dout = make_dout(out)
    bwd_ok = impl is not None and impl.supports_backward(dout, cache)
    backward = impl.backward if bwd_ok else op.backward
    ran = {"fwd": name if fwd_ok else kernels.REFERENCE, "bwd": name if bwd_ok else kernels.REFERENCE}
    return forward, backward, out, cache, dout, ran


def _time_ours(case, timing):
    from ..ops import OPS

    op = OPS[case["op"]]
    xp = __import__("cupy") if case["backend"] == "cupy" else np
    device = "cupy" if case["backend"] == "cupy" else "cpu"
    host = op.make_inputs(case["sizes"], dtype=case["dtype"], seed=0)  # as ops.run_case makes them: the same numbers
    inputs = tuple(xp.asarray(a) for a in host)

    def make_dout(out):
        return xp.asarray(np.random.default_rng(1).standard_normal(np.shape(out)).astype(case["dtype"]))

    forward, backward, _, cache, dout, _ = implementation(op, case.get("impl"), inputs, make_dout)
    flush = l2_flusher(device) if case.get("flush") else None
    return {"fwd": measure(lambda: forward(*inputs), device, flush=flush, **timing),
            "bwd": measure(lambda: backward(dout, cache), device, flush=flush, **timing)}


def _time_torch(case, timing):
    import torch

    if case["backend"] != "cupy":
        return _time_torch_on(case, timing, torch)
    with torch.cuda.stream(torch.cuda.Stream()):  # a side stream for the whole case: see timing.gpu_api
        return _time_torch_on(case, timing, torch)


def _time_torch_on(case, timing, torch):
    from ..ops import OPS
    from .torch_ref import TORCH_OPS

    op = OPS[case["op"]]
    device = "cuda" if case["backend"] == "cupy" else "cpu"
    host = op.make_inputs(case["sizes"], dtype=case["dtype"], seed=0)
    tin = [torch.from_numpy(a).to(device) for a in host]
    tin = [t.requires_grad_() if t.is_floating_point() else t for t in tin]
    leaves = [t for t in tin if t.requires_grad]
    fn = TORCH_OPS[case["op"]]
    out = fn(*tin)
    dout = torch.from_numpy(np.random.default_rng(1).standard_normal(tuple(out.shape)).astype(case["dtype"]))
    dout = dout.to(device)
    flush = l2_flusher(device) if case.get("flush") else None
    return {"fwd": measure(lambda: fn(*tin), device, flush=flush, **timing),
            "bwd": measure(lambda: torch.autograd.grad(out, leaves, dout, retain_graph=True), device, flush=flush,
                           **timing)}


def serve(request: dict) -> list:
    """In the worker: time every case of ``request`` on its side; a case that fails gives its error."""
    if any(c["backend"] == "numpy" for c in request["cases"]):
        from ..backend import tune_host_allocator

        # both sides as scratchllm's GPT runs (and as the parent does): freed large blocks are reused, not
        # returned to the OS and faulted in afresh at every call (torch's GELU at GPT-2 small's MLP shape:
        # 31 ms a call with the default thresholds, 12 ms without the page faults)
        tune_host_allocator()
    timer = _time_ours if request["side"] == "ours" else _time_torch
    results = []
    for case in request["cases"]:
        try:
            results.append(timer(case, request.get("timing", {})))
        except Exception as e:  # reported on the row, never a hang
            results.append({"error": f"{type(e).__name__}: {e}"})
    return results


def run_isolated(cases: list, sides: dict, processes: int, timing: dict, progress=None) -> dict:
    """``{side: [per case: {"fwd": summary, "bwd": summary} or {"error": ...}]}``: each side of ``sides`` (a dict
    side -> the indices of the cases it times) in ``processes`` worker processes of its own, alternating."""
    per = {side: {i: {"fwd": [], "bwd": []} for i in idx} for side, idx in sides.items()}
    errors = {side: {} for side in sides}
    order = [s for s in SIDES if sides.get(s)]
    for p in range(processes):
        for side in (order if p % 2 == 0 else order[::-1]):
            idx = sides[side]
            request = {"side": side, "cases": [cases[i] for i in idx], "timing": timing}
            done = subprocess.run([sys.executable, "-m", "scratchllm.bench.isolate"], input=json.dumps(request),
                                  capture_output=True, text=True)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"the {side} timing process failed (exit {done.returncode}): {last}")
            for i, result in zip(idx, json.loads(done.stdout)):
                if "error" in result:
                    errors[side][i] = result["error"]
                else:
                    for k in ("fwd", "bwd"):
                        per[side][i][k].append(result[k])
            if progress:
                progress(f"{side} process {p + 1}/{processes}")
    out = {}
    for side, by_case in per.items():
        out[side] = {}
        for i, runs in by_case.items():
            if i in errors[side]:
                out[side][i] = {"error": errors[side][i]}
                continue
            out[side][i] = {k: _pool(runs[k]) for k in ("fwd", "bwd")}
    return out


def _pool(summaries: list) -> dict:
    """One summary of the samples of several processes, with each process's median kept (on a GPU the
    median of their host times, and their CUDA-graph replays pooled the same way)."""
    samples = [s / 1e3 for t in summaries for s in t["samples_ms"]]
    sizes = [len(t["samples_ms"]) for t in summaries]
    pooled = summarize(samples, summaries[0]["number"], groups=sizes)  # the interval holds the processes' spread
    pooled["process_medians_ms"] = [t["median_ms"] for t in summaries]
    pooled["process_sizes"] = sizes
    pooled["drift"] = max(t["drift"] for t in summaries)  # within a process: the pooled samples run in order
    pooled["flags"] = [f for f in pooled["flags"] if f != "drift"] + (
        ["drift"] if any("drift" in t["flags"] for t in summaries) else [])
    meds = pooled["process_medians_ms"]
    if len(meds) > 1 and (max(meds) - min(meds)) / pooled["median_ms"] > 0.10 and "processes" not in pooled["flags"]:
        pooled["flags"].append("processes")  # the processes disagree by more than 10 %: run-to-run noise
    if all("host_ms" in t for t in summaries):
        mark_launch_bound(pooled, statistics.median(t["host_ms"] for t in summaries))
    graphs = [t["graph"] for t in summaries if t.get("graph")]
    if graphs:
        errors = [g["error"] for g in graphs if "error" in g]
        pooled["graph"] = {"error": errors[0]} if errors else {**_pool(graphs), "captured_calls":
                                                                graphs[0]["captured_calls"]}
    return pooled


if __name__ == "__main__":
    json.dump(serve(json.load(sys.stdin)), sys.stdout)
