"""The tables of ``scratchllm bench``: times as medians with their 95 % interval and flags, ratios with their
intervals, the share of each row's ceiling (``ceilings.py``) named by level."""

from __future__ import annotations


def _g(v, spec=".3g"):
    return "" if v is None else format(v, spec)


def fmt_time(t) -> str:
    """The median and its 95 % confidence interval, in a unit that keeps 3 significant digits (µs, ms or s),
    with the measurement's flags (``timing.summarize``): ``1.23 ms (1.20-1.27)``, ``9.25 ms (6.0-12) ⚠ noisy``.
    A summary without an interval (an old JSON) shows median ± IQR."""
    if not t:
        return ""
    m = t["median_ms"]
    scale, unit = (1e3, "µs") if m < 1 else (1e-3, "s") if m >= 1e3 else (1, "ms")
    if "ci95_ms" not in t:
        return f"{m * scale:.3g} ± {t['iqr_ms'] * scale:.2g} {unit} (IQR)"
    flags = "".join(f" ⚠ {f}" for f in t.get("flags", []))
    if not t["ci95_ms"]:  # a single value (the host's enqueueing time)
        return f"{m * scale:.3g} {unit}{flags}"
    lo, hi = (v * scale for v in t["ci95_ms"])
    return f"{m * scale:.3g} {unit} ({lo:.3g}-{hi:.3g}){flags}"


def _pct(r, k) -> str:
    """``45.1% B LLC``: the share of the ceiling, F (GEMM peak) or B (bandwidth of the named level)."""
    value, kind = r["pct_peak"][k]
    ceiling = r.get("ceiling", {}).get(k, {})
    where = f" {ceiling['level']}" if kind == "B" and ceiling.get("level") else ""
    return f"{value:.1f}% {kind}{where}" + (f" ({ceiling['note']})" if ceiling.get("note") else "")


def fmt_ratio(r, k) -> str:
    """A ratio with its 95 % interval, ``0.84 (0.80-0.88)``; blank when there is none."""
    v = r.get("ratio_torch", {}).get(k)
    if v is None:
        return ""
    ci = r.get("ratio_torch_ci", {}).get(k)
    parts = ("fwd", "bwd") if k == "total" else (k,)
    sides = [t for p in parts for t in (r.get(p), (r.get("torch") or {}).get(p)) if t]
    doubt = " ⚠" if any("bimodal" in t.get("flags", []) for t in sides) else ""  # a side's median is not its speed
    return f"{v:.2f}" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "") + doubt


def _host(t) -> str:
    return "" if not t or t.get("host_ms") is None else fmt_time({"median_ms": t["host_ms"], "ci95_ms": None})


def _graph(t) -> str:
    g = (t or {}).get("graph")
    return "" if not g else g["error"].split(":")[0] if "error" in g else fmt_time(g)


def gpu_markdown(rows) -> list:
    """The GPU rows' three times per direction: the events' (the table's), the host's enqueueing per call, and
    a CUDA graph's replay per call (``--cuda-graph``; blank without it). Empty when no row ran on a GPU."""
    gpu = [r for r in rows if r.get("device") == "gpu" and r["check"]["ok"]]
    if not gpu:
        return []
    out = ["GPU times per call: the CUDA events' (as in the table above), the CPU time the host spent enqueueing it "
           "(launch-bound: that is 90 % of the GPU time or more, so the GPU waited on Python), and the calls "
           "captured into one CUDA graph and replayed (the kernels' own time; `--cuda-graph`).", "",
           "| op | sizes | ran (fwd/bwd) | side | fwd GPU | fwd host | fwd graph | bwd GPU | bwd host | bwd graph |",
           "|" + "---|" * 10]
    for r in gpu:
        sizes = " ".join(f"{k}{v}" for k, v in r["sizes"].items())
        ran = "/".join(dict.fromkeys(r["impl"].values())) if r.get("impl") else ""
        for side, t in (("ours", r), ("torch", r["torch"] or {})):
            if t.get("fwd"):
                cells = [r["op"], sizes, ran if side == "ours" else "torch CUDA", side]
                cells += [f(t.get(k)) for k in ("fwd", "bwd") for f in (fmt_time, _host, _graph)]
                out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def ops_markdown(rows) -> str:
    """One markdown table per shape set. Times are medians with their 95 % interval and flags; ratios are
    time / time (ours/torch > 1: slower than torch) with their interval; speedup vs numpy is the numpy row's
    fwd+bwd time over this row's."""
    head = ("| op | sizes | backend | check | fwd | bwd | fwd GFLOP/s | fwd GB/s | fwd % peak | bwd GFLOP/s "
            "| bwd GB/s | bwd % peak | torch fwd | torch bwd | ours/torch fwd | ours/torch bwd "
            "| ours/torch fwd+bwd | speedup vs numpy | ran (fwd/bwd) |")
    out = []
    for shape_set in dict.fromkeys(r["shapes"] for r in rows):
        out += [f"### ops, shapes `{shape_set}` ({rows[0]['dtype']})", "", head, "|" + "---|" * 19]
        for r in (r for r in rows if r["shapes"] == shape_set):
            ms = fmt_time
            pct = lambda k: "" if k not in r.get("pct_peak", {}) else _pct(r, k)  # noqa: E731
            tt = r["torch"] or {}
            check = "ok" if r["check"]["ok"] else f"FAIL: {r['check']['reason']}"
            if tt.get("check") not in (None, "ok") and r["check"]["ok"]:
                check += f" (torch: {tt['check'].split(' (')[0]})"
            sizes = " ".join(f"{k}{v}" for k, v in r["sizes"].items())
            cells = [r["op"], sizes, r["backend"], check, ms(r["fwd"]), ms(r["bwd"]),
                     _g(r.get("gflops", {}).get("fwd")), _g(r.get("gbs", {}).get("fwd")), pct("fwd"),
                     _g(r.get("gflops", {}).get("bwd")), _g(r.get("gbs", {}).get("bwd")), pct("bwd"),
                     ms(tt.get("fwd")), ms(tt.get("bwd"))]
            cells += [fmt_ratio(r, k) for k in ("fwd", "bwd", "total")]
            cells += [_g(r.get("speedup_numpy", {}).get("total"), ".1f")]
            cells += ["/".join(dict.fromkeys(r["impl"].values())) if r.get("impl") else ""]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        out += gpu_markdown([r for r in rows if r["shapes"] == shape_set])
    return "\n".join(out)
