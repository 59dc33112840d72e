"""The ops suite of ``scratchllm bench``: every op of ``ops.OPS``, forward and backward timed separately.

Shape sets (the registry's size letters; every row records its exact sizes)
    tiny        each op's registry ``default_sizes``.
    gpt2-small  GPT-2 small's per-layer shapes, T1024 C768 H12 V50257 and batch B (8 by default; smaller on the
                CPU (4; B8 takes about twice as long): ``--batch`` overrides, and the B is in the table).
    sweep       a few sizes per op for the time-vs-size plot: 2^14 .. 2^22 elements (rows x 1024) for the
                elementwise and row-wise ops, square matmuls 128 .. 2048, attention T 64 .. 1024, cross-entropy
                and embedding rows at V50257. The variants (softmax_axis1, attention_noncausal, attention_dropout,
                attention_blocked) are skipped there.

Correctness before timing (a failed check marks the row and skips timing it)
    1. ours on the benchmarked backend and dtype against the NumPy float64 reference (the same op on the
       same inputs upcast), forward output and every float gradient, for a seeded random ``dout``:
       max |ours - ref| / max |ref| <= 1e-4 in float32 (1e-9 in float64);
    2. torch (same device, same dtype) against that reference at the same tolerance, when torch is
       installed (not for the dropout ops, whose masks differ): if ours passes 1 and torch disagrees, our
       math is what is suspect and the row fails;
    3. ``gradcheck`` of the op at its registry sizes in float64 (once per op), which catches a backward that
       is consistently wrong even when torch is not installed.

Timing: see ``timing.py``. Ours: forward alone; backward alone on the cache of one forward. Torch: forward
with ``requires_grad`` inputs (the graph is built, as in training); backward alone as
``torch.autograd.grad(out, inputs, dout, retain_graph=True)`` on one recorded graph, so neither side's
backward time includes a forward.

FLOP and byte model (``cost``; s = bytes per element, E = elements of the activation; integer ids 8 bytes).
Bytes are the compulsory traffic: every input read once and every output written once; intermediates
(attention's T x T weights, softmax statistics) are not counted. Transcendentals (tanh, erf, exp) count 1.

    op             fwd FLOPs              fwd bytes                  bwd FLOPs              bwd bytes
    linear         2 N Cin Cout + N Cout  s(N Cin + Cin Cout         4 N Cin Cout + N Cout  s(2 N Cin + N Cout
                                            + Cout + N Cout)                                + 2 Cin Cout + Cout)
    embedding      0                      2 s BT C + 8 BT            BT C                   s(V C + BT C) + 8 BT
    layernorm      8 N C                  s(2 N C + 2 C)             13 N C                 s(3 N C + 3 C)
    gelu (tanh)    10 E                   2 s E                      17 E                   3 s E
    gelu_erf       5 E                    2 s E                      11 E                   3 s E
    softmax        5 E                    2 s E                      4 E                    3 s E
    dropout        2 E                    2 s E + E (bool mask)      2 E                    2 s E + E
    attention      4 P D + 5 P            4 s BHTD                   8 P D + 4 P            7 s BHTD
    cross_entropy  4 R V + 3 R            s R V + 8 R                2 R V                  2 s R V + 8 R

    attention: P = B H T (T+1) / 2 query-key pairs when causal (useful work: a kernel that computes the full
    T x T scores does twice the matmul work), B H T^2 for attention_noncausal; attention_dropout adds 2 P each
    way; attention_blocked and flash_attention count as attention (the useful work: flash attention's backward
    also recomputes the scores, 2 P D more). cross_entropy: R = B T rows.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from ..backend import to_numpy
from .ceilings import ceiling_for
from .isolate import implementation, run_isolated
from .timing import l2_flusher, measure, ratio_ci
from .. import kernels
from ..kernels.dispatch import dispatched

CPU_BATCH = 4  # gpt2-small B on the CPU: every op checked and timed in about 2 minutes on 2 cores
TOL = {"float32": 1e-4, "float64": 1e-9}
SHAPE_SETS = ("tiny", "gpt2-small", "sweep")


def gpt2_small(B=8, T=1024, C=768, H=12, V=50257):
    """Per-layer shapes of GPT-2 small at batch B (linear: the MLP's c_fc; dropout: the residual's)."""
    N, att = B * T, dict(B=B, H=H, T=T, D=C // H)
    return {"linear": dict(N=N, Cin=C, Cout=4 * C), "embedding": dict(B=B, T=T, V=V, C=C),
            "layernorm": dict(N=N, C=C), "gelu": dict(N=N, C=4 * C), "gelu_erf": dict(N=N, C=4 * C),
            "softmax": dict(B=B * H, T=T, C=T), "softmax_axis1": dict(B=B * H, T=T, C=T),
            "attention": att, "attention_noncausal": att, "attention_dropout": att, "attention_blocked": att,
            "flash_attention": att,
            "dropout": dict(N=N, C=C), "cross_entropy": dict(B=B, T=T, V=V)}


_ROWS = (16, 64, 256, 1024, 4096)  # x 1024 columns: 2^14 .. 2^22 elements
SWEEP = {
    "linear": [dict(N=n, Cin=n, Cout=n) for n in (128, 256, 512, 1024, 2048)],
    "layernorm": [dict(N=n, C=1024) for n in _ROWS],
    "gelu": [dict(N=n, C=1024) for n in _ROWS],
    "gelu_erf": [dict(N=n, C=1024) for n in _ROWS],
    "dropout": [dict(N=n, C=1024) for n in _ROWS],
    "softmax": [dict(B=1, T=n, C=1024) for n in _ROWS],
    "attention": [dict(B=1, H=12, T=t, D=64) for t in (64, 128, 256, 512, 1024)],
    "flash_attention": [dict(B=1, H=12, T=t, D=64) for t in (64, 128, 256, 512, 1024)],
    "embedding": [dict(B=1, T=t, V=50257, C=768) for t in (256, 1024, 4096, 16384)],
    "cross_entropy": [dict(B=1, T=t, V=50257) for t in (16, 64, 256, 1024)],
}


def shape_cases(shape_set, name, op, batch):
    """The list of size dicts to run ``op`` at in ``shape_set`` (empty: not covered there)."""
    if shape_set == "tiny":
        return [dict(op.default_sizes)]
    if shape_set == "gpt2-small":
        sizes = gpt2_small(B=batch).get(name)
        return [sizes] if sizes else []
    return list(SWEEP.get(name, []))


# ------------------------------------------------------------------------------------- FLOP/byte model
def _attention(s, B, H, T, D, causal=True, dropout=False):
    P = B * H * (T * (T + 1) // 2 if causal else T * T)
    extra = 2 * P if dropout else 0
    return (4 * P * D + 5 * P + extra, 4 * s * B * H * T * D), (8 * P * D + 4 * P + extra, 7 * s * B * H * T * D)


def _elementwise(f_fwd, f_bwd, mask=0):
    def cost(s, **sz):
        E = int(np.prod(list(sz.values())))
        return (f_fwd * E, 2 * s * E + mask * E), (f_bwd * E, (2 if mask else 3) * s * E + mask * E)
    return cost


COSTS = {
    "linear": lambda s, N, Cin, Cout: (
        (2 * N * Cin * Cout + N * Cout, s * (N * Cin + Cin * Cout + Cout + N * Cout)),
        (4 * N * Cin * Cout + N * Cout, s * (2 * N * Cin + N * Cout + 2 * Cin * Cout + Cout))),
    "embedding": lambda s, B, T, V, C: (
        (0, 2 * s * B * T * C + 8 * B * T),
        (B * T * C, s * (V * C + B * T * C) + 8 * B * T)),
    "layernorm": lambda s, N, C: ((8 * N * C, s * (2 * N * C + 2 * C)), (13 * N * C, s * (3 * N * C + 3 * C))),
    "gelu": _elementwise(10, 17),
    "gelu_erf": _elementwise(5, 11),
    "softmax": _elementwise(5, 4),
    "softmax_axis1": _elementwise(5, 4),
    "dropout": _elementwise(2, 2, mask=1),
    "attention": _attention,
    "attention_blocked": _attention,
    "flash_attention": _attention,  # the useful work, as attention's (its backward also recomputes S: 2 P D more)
    "flash_attention_noncausal": lambda s, **sz: _attention(s, **sz, causal=False),
    "flash_attention_kv": _attention,  # (Tk = T + 3: counted at T)
    "attention_noncausal": lambda s, **sz: _attention(s, **sz, causal=False),
    "attention_dropout": lambda s, **sz: _attention(s, **sz, dropout=True),
    "cross_entropy": lambda s, B, T, V: ((4 * B * T * V + 3 * B * T, s * B * T * V + 8 * B * T),
                                         (2 * B * T * V, 2 * s * B * T * V + 8 * B * T)),
    "rmsnorm": lambda s, N, C: ((4 * N * C, s * (2 * N * C + C)), (8 * N * C, s * (3 * N * C + 2 * C))),
    "rope": lambda s, B, H, T, D: ((4 * B * H * T * D, s * (2 * B * H * T * D + 2 * T * D)),) * 2,  # cos, sin once
    "rope_rows": lambda s, B, H, T, D: ((4 * B * H * T * D, s * (2 * B * H * T * D + 2 * B * T * D)),) * 2,
    # swiglu: sigmoid by tanh (counted 4), silu, the product; backward reads dout, gate, up, sig, silu
    "swiglu": lambda s, N, C: ((6 * N * C, 3 * s * N * C), (7 * N * C, 7 * s * N * C)),
    "attention_gqa": lambda s, B, H, Hk, T, D: _attention(s, B, H, T, D),  # k, v read once per group: fewer bytes
    "attention_blocked_gqa": lambda s, B, H, Hk, T, D: _attention(s, B, H, T, D),
    "flash_attention_mqa": lambda s, B, H, Hk, T, D: _attention(s, B, H, T, D),
}


def cost(name, sizes, itemsize=4):
    """``{"fwd": (flops, bytes), "bwd": (flops, bytes)}`` from the model above; None for an op without one."""
    f = COSTS.get(name)
    if f is None:
        return None
    fwd, bwd = f(itemsize, **sizes)
    return {"fwd": tuple(int(v) for v in fwd), "bwd": tuple(int(v) for v in bwd)}


# ------------------------------------------------------------------------------------------ correctness
def max_rel_err(a, ref) -> float:
    """max |a - ref| / max |ref| (in float64, in chunks so a 1.6 GB array needs no 3 GB temporaries)."""
    a, ref = to_numpy(a).reshape(-1), np.asarray(ref).reshape(-1)
    if a.shape != ref.shape:
        return float("inf")
    if not ref.size:
        return 0.0
    diff = scale = 0.0
    for i in range(0, ref.size, 1 << 22):
        r, x = ref[i:i + (1 << 22)].astype(np.float64), a[i:i + (1 << 22)].astype(np.float64)
        diff, scale = max(diff, float(np.max(np.abs(x - r)))), max(scale, float(np.max(np.abs(r))))
    return diff / max(scale, 1e-300)


def _errors(out, grads, ref_out, ref_grads, names):
    errs = {"out": max_rel_err(out, ref_out)}
    for n, g, r in zip(names, grads, ref_grads):
        if r is not None:
            errs["d" + n] = max_rel_err(g, r) if g is not None else float("inf")
    return errs


def _verdict(errs, tol, who):
    bad = {k: v for k, v in errs.items() if not v <= tol}  # NaN fails too
    if not bad:
        return None
    k = max(bad, key=lambda k: bad[k] if bad[k] == bad[k] else float("inf"))
    return f"{who} {k}: max rel err {bad[k]:.2e} > {tol:g}"


_GRADCHECKED: dict = {}


def _gradcheck(name, op):
    from ..gradcheck import gradcheck

    forward, backward = dispatched(op.forward), dispatched(op.backward)  # dispatched, at the registry's sizes
    key = (name, forward, backward)
    if key not in _GRADCHECKED:
        rep = gradcheck(forward, backward, op.make_inputs(dtype="float64"), mode="auto",
                        names=op.input_names, raise_on_fail=False)
        bad = [f"d{r.name} max rel err {r.max_rel_err:.2e}" for r in rep.inputs if not r.ok]
        bad += [f"{check}: {detail}" for check, ok, detail in rep.checks if not ok]
        _GRADCHECKED[key] = None if rep.ok else f"gradcheck at {op.default_sizes} (float64) failed: {'; '.join(bad)}"
    return _GRADCHECKED[key]


# ------------------------------------------------------------------------------------------------ a case
def run_case(name, op, sizes, backend, dtype, repeats, torch, flush_l2, timing=None, in_process=True, impl=None):
    """Check, then (``in_process``) time, one op at one size on one backend (and torch on the same device).
    ``timing``: ``measure``'s time budget (``timing.QUICK`` for ``--quick``). ``impl``: time that registered
    implementation ("reference": the textbook) instead of what the dispatch picks (``isolate.implementation``)."""
    import importlib

    xp = importlib.import_module("cupy") if backend == "cupy" else np
    device = "cupy" if backend == "cupy" else "cpu"
    row = {"op": name, "sizes": dict(sizes), "backend": backend, "device": "gpu" if backend == "cupy" else "cpu",
           "dtype": dtype, "fwd": None, "bwd": None, "torch": None}
    tol = TOL[dtype]
    host = op.make_inputs(sizes, dtype=dtype, seed=0)
    ref_in = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in host]
    ref_out, ref_cache = dispatched(op.forward)(*ref_in)  # float64 (the registry tests prove every
    dout_h = np.asarray(np.random.default_rng(1).standard_normal(np.shape(ref_out))).astype(dtype)  # implementation
    ref_grads = dispatched(op.backward)(dout_h.astype(np.float64), ref_cache)  # equal to the textbook)
    del ref_cache
    inputs = tuple(xp.asarray(a) for a in host)
    forward, backward, out, cache, dout, ran = implementation(op, impl, inputs, lambda _: xp.asarray(dout_h))
    row["impl"] = ran  # which registered implementation the timings below are of (kernels/registry.py)
    if impl is not None:
        row["impl_forced"] = impl
        if impl != kernels.REFERENCE and set(ran.values()) == {kernels.REFERENCE}:
            return None  # its rules take neither direction of these inputs: no row
    errs = _errors(out, backward(dout, cache), ref_out, ref_grads, op.input_names)
    problem = _verdict(errs, tol, "ours") or _gradcheck(name, op)
    row["check"] = {"ok": problem is None, "reason": problem, "tol": tol, "errors": errs}
    del out

    tfn, tdev = None, None
    if torch is not None:
        from .torch_ref import TIMING_ONLY, TORCH_OPS

        tfn = TORCH_OPS.get(name)
        tdev = "cuda" if backend == "cupy" else "cpu"
        if backend == "cupy" and not torch.cuda.is_available():
            tfn = None
    if tfn is not None:
        tin = [torch.from_numpy(a).to(tdev) for a in host]
        tin = [t.requires_grad_() if t.is_floating_point() else t for t in tin]
        leaves = [t for t in tin if t.requires_grad]
        tdout = torch.from_numpy(dout_h).to(tdev)
        tout = tfn(*tin)
        tgrads = torch.autograd.grad(tout, leaves, tdout, retain_graph=True)
        if name in TIMING_ONLY:
            tcheck = "timing only (random masks differ)"
        else:
            it = iter(tgrads)
            terrs = _errors(tout.detach().cpu().numpy(), [next(it).cpu().numpy() if a.dtype.kind == "f" else None
                                                         for a in host], ref_out, ref_grads, op.input_names)
            tcheck = _verdict(terrs, tol, "torch") or "ok"
            row["check"]["torch_errors"] = terrs
            if tcheck != "ok" and problem is None:
                row["check"].update(ok=False, reason=f"ours disagrees with torch ({tcheck})")
        row["torch"] = {"device": tdev, "check": tcheck, "fwd": None, "bwd": None}
    del ref_out, ref_grads
    if not row["check"]["ok"] or not in_process:
        return row

    timing = timing or {}
    flush = l2_flusher(device) if flush_l2 else None
    row["fwd"] = measure(lambda: forward(*inputs), device, repeats, flush, **timing)
    row["bwd"] = measure(lambda: backward(dout, cache), device, repeats, flush, **timing)
    if tfn is not None:
        tflush = l2_flusher(tdev) if flush_l2 else None
        ttiming = {k: v for k, v in timing.items() if k != "graph"}  # torch's graphs: in the workers (isolate.py)
        row["torch"]["fwd"] = measure(lambda: tfn(*tin), tdev, repeats, tflush, **ttiming)
        row["torch"]["bwd"] = measure(lambda: torch.autograd.grad(tout, leaves, tdout, retain_graph=True),
                                      tdev, repeats, tflush, **ttiming)
    return row


def time_isolated(rows, processes, timing, flush_l2, repeats, progress=None):
    """Time the checked rows' two sides in worker processes of their own (``isolate.py``), in place; torch once
    per (op, sizes, backend, dtype), shared by that case's implementation rows."""
    cases, sides, torch_case, owners = [], {"ours": [], "torch": []}, {}, {}
    for i, r in enumerate(rows):
        if not r["check"]["ok"]:
            continue
        spec = {"op": r["op"], "sizes": r["sizes"], "backend": r["backend"], "dtype": r["dtype"], "flush": flush_l2}
        sides["ours"].append(len(cases))
        owners[len(cases)] = [("ours", i)]
        cases.append({**spec, "impl": r.get("impl_forced")})
        if r["torch"] is not None:
            key = json.dumps(spec, sort_keys=True)
            if key not in torch_case:
                torch_case[key] = len(cases)
                sides["torch"].append(len(cases))
                owners[len(cases)] = []
                cases.append(spec)
            owners[torch_case[key]].append(("torch", i))
    if not cases:
        return
    timed = run_isolated(cases, sides, processes, {**timing, "repeats": repeats}, progress)
    for side, results in timed.items():
        for c, result in results.items():
            for _, i in owners[c]:
                row = rows[i]
                where = row if side == "ours" else row["torch"]
                if "error" in result:
                    row["check"].update(ok=False, reason=f"timing ({side}): {result['error']}")
                else:
                    where["fwd"], where["bwd"] = result["fwd"], result["bwd"]


def derive(rows, peaks):
    """Add GFLOP/s, GB/s, % of peak, ratio to torch and speedup over numpy to every row (in place)."""
    numpy_rows = {(r["shapes"], r["op"], str(r["sizes"])): r for r in rows if r["backend"] == "numpy"}
    for r in rows:
        c = cost(r["op"], r["sizes"], np.dtype(r["dtype"]).itemsize)
        r["flops"] = {k: c[k][0] for k in c} if c else None
        r["bytes"] = {k: c[k][1] for k in c} if c else None
        r["gflops"], r["gbs"], r["pct_peak"], r["ratio_torch"], r["speedup_numpy"] = {}, {}, {}, {}, {}
        r["ceiling"] = {}
        peak = peaks.get(r["device"], {})
        for k in ("fwd", "bwd"):
            t = r[k] and r[k]["median_ms"] / 1e3
            if t and c and peak:
                r["gflops"][k], r["gbs"][k] = c[k][0] / t / 1e9, c[k][1] / t / 1e9
                ceiling = r["ceiling"][k] = ceiling_for(peak, c[k][1], r["gbs"][k])
                f, b = r["gflops"][k] / peak["peak_gflops"], r["gbs"][k] / ceiling["gbs"]
                r["pct_peak"][k] = [100 * max(f, b), "F" if f >= b else "B"]
        tt = r["torch"] or {}
        r["ratio_torch_ci"] = {}
        for k in ("fwd", "bwd", "total"):
            ours, theirs = _t(r, k), _t(tt, k)
            if ours and theirs:
                r["ratio_torch"][k] = ours / theirs
                parts = ("fwd", "bwd") if k == "total" else (k,)
                r["ratio_torch_ci"][k] = ratio_ci([r[p] for p in parts], [tt[p] for p in parts])["ci95"]
            base = numpy_rows.get((r["shapes"], r["op"], str(r["sizes"])))
            if r["backend"] != "numpy" and ours and base and _t(base, k):
                r["speedup_numpy"][k] = _t(base, k) / ours
    return rows


def _t(r, k):
    if k == "total":
        f, b = _t(r, "fwd"), _t(r, "bwd")
        return f + b if f and b else None
    return r.get(k) and r[k]["median_ms"]


def run(shapes, names, backends, dtype, repeats, batch, torch, flush_l2, peaks, progress, registry, notes,
        timing=None, processes=3, impls=False):
    """Every (shape set, op, sizes, backend) case: checked, then timed (each side in ``processes`` worker
    processes of its own; 0: here, in this process), derived. Returns the rows."""
    from tqdm import tqdm

    from ..ops import OPS

    if registry is not None and registry is not OPS and processes:  # a worker can only rebuild OPS's cases
        notes.append("a registry other than OPS: timed in this process")
        processes = 0
    registry = OPS if registry is None else registry
    names = list(names or registry)
    if batch is None:
        batch = CPU_BATCH if "numpy" in backends else 8
    cases = [(s, n, sz, b, i) for s in shapes for n in names for sz in shape_cases(s, n, registry[n], batch)
             for b in backends
             for i in ([kernels.REFERENCE, *kernels.implementations(registry[n].family)] if impls else [None])]
    if impls:
        notes.append("--impls: a row per registered implementation that takes the inputs (its rules; the textbook's "
                     "direction where it takes one only), the textbook (reference) first; torch timed once per case")
    if "gpt2-small" in shapes:
        notes.append(f"gpt2-small shapes at B={batch}" + (" (B8 is GPT-2's; smaller on the CPU to keep the run "
                                                         "short: --batch 8 for the real one)" if batch != 8 else ""))
    skipped = sorted({n for s in shapes for n in names if not shape_cases(s, n, registry[n], batch)})
    if skipped:
        notes.append(f"not in every shape set (skipped there): {', '.join(skipped)}")
    rows = []
    bar = tqdm(cases, file=sys.stderr, disable=not progress, desc="bench ops", unit="case", dynamic_ncols=True)
    for shape_set, name, sizes, backend, impl in bar:
        bar.set_postfix_str(f"{shape_set} {name} {backend}" + (f" {impl}" if impl else ""))
        try:
            row = run_case(name, registry[name], sizes, backend, dtype, repeats, torch, flush_l2, timing,
                           in_process=not processes, impl=impl)
            if row is None:
                continue
        except Exception as e:  # an op that raises (or runs out of memory) fails its row, not the run
            row = {"op": name, "sizes": dict(sizes), "backend": backend, "device": "gpu" if backend == "cupy"
                   else "cpu", "dtype": dtype, "fwd": None, "bwd": None, "torch": None,
                   "check": {"ok": False, "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}}
        row["shapes"] = shape_set
        rows.append(row)
        if backend == "cupy":
            import cupy
            cupy.get_default_memory_pool().free_all_blocks()
    if processes:
        time_isolated(rows, processes, timing or {}, flush_l2, repeats,
                      progress=(lambda what: bar.set_postfix_str(f"timing: {what}")) if progress else None)
    return derive(rows, peaks)
