"""``scratchllm bench compare A.json B.json``: two runs side by side, row by row.

For each row found in both (the same shape set, op, sizes, backend and dtype; a train config and backend) and
each timing (fwd, bwd; ours and torch), the ratio B/A of the medians with its 95 % bootstrap interval from both
runs' samples, and a verdict: ``faster`` or ``slower`` when the interval lies wholly below or above 1 and the
change is over ``MIN_CHANGE`` (smaller ones are not worth a verdict on a shared machine), else ``same``;
``unsure (bimodal)`` when either run's median sat far above its fastest samples (a contended CPU). Then the
environment keys whose values differ, so that a difference of machine or versions is in plain sight.
The JSON schema: docs/bench_json.md.
"""

from __future__ import annotations

import json

from .timing import ratio_ci

MIN_CHANGE = 0.03  # |ratio - 1| below this: "same" even when the interval excludes 1
SCHEMAS = (1, 2)
_ENV_SKIP = {"time_utc"}


class CompareError(ValueError):
    """A file that is not a ``scratchllm bench --json`` result."""


def load(path) -> dict:
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CompareError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(result, dict) or result.get("schema") not in SCHEMAS or "env" not in result:
        raise CompareError(f"{path}: not a scratchllm bench --json result (schema {SCHEMAS})")
    return result


def _key(row) -> tuple:
    if "config" in row:
        return ("train", row["config"], row["backend"])
    return (row.get("shapes"), row["op"], json.dumps(row["sizes"], sort_keys=True), row["backend"], row["dtype"],
            json.dumps(row.get("impl_forced")))


def _verdict(ratio, ci) -> str:
    if ci[1] < 1 and ratio < 1 - MIN_CHANGE:
        return "faster"
    if ci[0] > 1 and ratio > 1 + MIN_CHANGE:
        return "slower"
    return "same"


def _timings(row):
    """(label, summary) of every timing of a row."""
    if "config" in row:
        yield "ours step", row.get("ours")
        yield "torch step", row.get("torch")
        return
    yield "fwd", row.get("fwd")
    yield "bwd", row.get("bwd")
    torch = row.get("torch") or {}
    yield "torch fwd", torch.get("fwd")
    yield "torch bwd", torch.get("bwd")


def compare(a: dict, b: dict) -> dict:
    """``{"rows": [...], "only_a": n, "only_b": n, "env_diff": {key: (a, b)}}``."""
    rows_a = {_key(r): r for r in a.get("ops", []) + a.get("train", [])}
    rows_b = {_key(r): r for r in b.get("ops", []) + b.get("train", [])}
    out = []
    for key, rb in rows_b.items():
        ra = rows_a.get(key)
        if ra is None:
            continue
        ta, tb = dict(_timings(ra)), dict(_timings(rb))
        for label in ta:
            if not ta[label] or not tb.get(label) or "samples_ms" not in ta[label] or "samples_ms" not in tb[label]:
                continue
            r = ratio_ci([tb[label]], [ta[label]])
            name = rb.get("config") or f"{rb['op']} {' '.join(f'{k}{v}' for k, v in rb['sizes'].items())}"
            bimodal = any("bimodal" in t.get("flags", []) for t in (ta[label], tb[label]))
            out.append({"row": name, "backend": rb["backend"], "timing": label, "a_ms": ta[label]["median_ms"],
                        "b_ms": tb[label]["median_ms"], "ratio": r["ratio"], "ci95": r["ci95"],
                        "verdict": "unsure (bimodal)" if bimodal else _verdict(r["ratio"], r["ci95"])})
    env_a, env_b = a["env"], b["env"]
    diff = {k: (env_a.get(k), env_b.get(k)) for k in sorted(set(env_a) | set(env_b))
            if k not in _ENV_SKIP and env_a.get(k) != env_b.get(k)}
    for dev in ("cpu", "gpu"):  # the denominators too
        pa, pb = a.get("peaks", {}).get(dev) or {}, b.get("peaks", {}).get(dev) or {}
        for k in ("peak_gflops", "peak_gbs"):
            if pa.get(k) and pb.get(k) and abs(pa[k] / pb[k] - 1) > 0.05:
                diff[f"peaks.{dev}.{k}"] = (round(pa[k], 1), round(pb[k], 1))
    return {"rows": out, "only_a": len(set(rows_a) - set(rows_b)), "only_b": len(set(rows_b) - set(rows_a)),
            "env_diff": diff}


def cli_compare(words) -> int:
    """``compare A.json B.json`` (the words after ``scratchllm bench``): print the comparison's markdown."""
    if words[0] != "compare" or len(words) != 3:
        raise CompareError(f"expected 'compare A.json B.json'; got {' '.join(words)!r}")
    print(markdown(compare(load(words[1]), load(words[2])), words[1], words[2]))
    return 0


def markdown(cmp: dict, path_a: str, path_b: str) -> str:
    lines = [f"### `{path_b}` against `{path_a}` (B/A: below 1, B is faster)", "",
             "| row | backend | timing | A | B | B/A (95% CI) | verdict |", "|---|---|---|---|---|---|---|"]
    for r in cmp["rows"]:
        lines.append(f"| {r['row']} | {r['backend']} | {r['timing']} | {r['a_ms']:.4g} ms | {r['b_ms']:.4g} ms | "
                     f"{r['ratio']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}) | {r['verdict']} |")
    counts = {v: sum(r["verdict"] == v for r in cmp["rows"]) for v in ("faster", "slower", "same")}
    unsure = len(cmp["rows"]) - sum(counts.values())
    lines += ["", f"{len(cmp['rows'])} timings compared: {counts['faster']} faster, {counts['slower']} slower, "
                  f"{counts['same']} the same (within the interval or under {MIN_CHANGE:.0%}), {unsure} unsure "
                  f"(bimodal: a contended CPU); rows only in A: "
                  f"{cmp['only_a']}, only in B: {cmp['only_b']}."]
    if cmp["env_diff"]:  # the machine's load (other processes' CPU use) explains many a verdict here
        lines += ["", "Environment differences (A -> B):", ""]
        lines += [f"- `{k}`: {a!r} -> {b!r}" for k, (a, b) in cmp["env_diff"].items()]
    else:
        lines += ["", "The environments are the same (commit, versions, threads, load, ceilings)."]
    return "\n".join(lines) + "\n"
