"""The train suite of ``scratchllm bench``: one training step (forward + backward + grad clip + AdamW) of
scratchllm against PyTorch eager with the identical model (``torch_ref.TorchGPT``, the same weights).

Configs (``TRAIN_CONFIGS``; float32, dropout 0, random token ids, AdamW lr 1e-3 betas (0.9, 0.99) weight decay
0.1 on >= 2-D params, clip 1.0):
    cpu               nanoGPT's CPU recipe: L4 H4 C128 T64 B12, V65 (shakespeare-char's vocabulary)
    shakespeare-char  nanoGPT's shakespeare-char model shape L6 H6 C384 T256, at B8, V65

Method: both models start from the same weights; the loss of the first batch must agree (|diff| <= 1e-4),
and so must the loss after the warm-up steps (rel. 1e-3: both took the same AdamW steps). Then ``rounds``
interleaved A/B rounds (the order alternates each round): each side runs one untimed step (right after a
switch the other library's thread pool is still spinning: measured, that costs the second side ~10%), then
``steps`` steps timed together (``perf_counter`` on the CPU, CUDA events on a GPU). Reported: median ms/step
and IQR over rounds, the median of the per-round ratios ours/torch, tokens/s, and MFU as nanoGPT's
``estimate_mfu``: FLOPs per token 6 N + 12 L H Q T (N: parameters without the position embeddings,
Q = C / H), times B T tokens per step, per second, over the machine's measured GEMM peak (``peaks``, the
better of NumPy's and torch's).
"""

from __future__ import annotations

import itertools
import math
import statistics
import sys

import numpy as np

from .timing import bootstrap, make_clock, summarize

TRAIN_CONFIGS = {
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65),
    "shakespeare-char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=8, vocab_size=65),
}
WARMUP = 3
ROUND_S = 0.5  # with steps=None, enough steps that one side's round lasts about this long


def flops_per_token(c, n_params_non_embedding):
    L, H, T = c["n_layer"], c["n_head"], c["block_size"]
    return 6 * n_params_non_embedding + 12 * L * H * (c["n_embd"] // H) * T


def _runners(c, backend, torch):
    """(ours(i) -> loss, torch(i) -> loss or None, model) for a config on a backend."""
    from ..models.gpt import GPT, GPTConfig
    from ..optim import AdamW, clip_grad_norm, decay_groups
    from ..parallel import DataParallel

    cfg = GPTConfig(c["vocab_size"], c["block_size"], c["n_layer"], c["n_head"], c["n_embd"])
    B, T, V = c["batch_size"], c["block_size"], c["vocab_size"]
    rng = np.random.default_rng(0)
    host = [(rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))) for _ in range(4)]
    model = GPT(cfg, seed=0, dtype="float32", backend=backend)
    batches = [(model.xp.asarray(a), model.xp.asarray(b)) for a, b in host]
    opt = AdamW(decay_groups(model.params, 0.1), lr=1e-3, betas=(0.9, 0.99))
    dp = DataParallel(model)  # as `train --nproc=1` runs it: the batch in shards on every core, in threads

    def ours(i):
        idx, tgt = batches[i % 4]
        _, loss, cache = dp.forward(idx, tgt)
        grads = dp.backward(cache)
        clip_grad_norm(grads, 1.0)
        opt.step(grads)
        return float(loss)

    if torch is None or (backend == "cupy" and not torch.cuda.is_available()):
        return ours, None, model
    from .torch_ref import TorchGPT

    dev = "cuda" if backend == "cupy" else "cpu"
    tmodel = TorchGPT(model.state_dict(), cfg.n_layer, cfg.n_head, device=dev)
    topt = torch.optim.AdamW(tmodel.decay_groups(0.1), lr=1e-3, betas=(0.9, 0.99))
    tbatches = [(torch.from_numpy(a).to(dev), torch.from_numpy(b).to(dev)) for a, b in host]

    def theirs(i):
        idx, tgt = tbatches[i % 4]
        loss = tmodel(idx, tgt)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 1.0)
        topt.step()
        return loss.detach()

    return ours, theirs, model


def run_config(name, c, backend, rounds, steps, torch, peaks):
    ours, theirs, model = _runners(c, backend, torch)
    device = "cupy" if backend == "cupy" else "cpu"
    n_params = model.num_params()
    n_ne = n_params - int(model.params["wpe.weight"].size)
    tokens = c["batch_size"] * c["block_size"]
    row = {"config": name, "model": dict(c), "backend": backend, "device": "gpu" if backend == "cupy" else "cpu",
           "params": n_params, "params_non_embedding": n_ne, "tokens_per_step": tokens,
           "flops_per_step": flops_per_token(c, n_ne) * tokens, "ours": None, "torch": None}
    # correctness first: same first loss, and the same loss after the same warm-up steps
    losses = [ours(i) for i in range(WARMUP + 1)]
    check = {"ok": True, "reason": None, "ours_losses": losses}
    if theirs is not None:
        tl = [float(theirs(i)) for i in range(WARMUP + 1)]
        check["torch_losses"] = tl
        if not abs(losses[0] - tl[0]) <= 1e-4 or not abs(losses[-1] - tl[-1]) <= 1e-3 * abs(tl[-1]):
            check.update(ok=False, reason=f"losses differ from torch: ours {losses[0]:.6f} -> {losses[-1]:.6f}, "
                                          f"torch {tl[0]:.6f} -> {tl[-1]:.6f}")
    elif not all(math.isfinite(v) for v in losses):
        check.update(ok=False, reason=f"non-finite loss {losses}")
    row["check"] = check
    if not check["ok"]:
        return row
    sides = {"ours": ours, **({"torch": theirs} if theirs else {})}
    clocks = {side: make_clock(device if side == "ours" or device == "cpu" else "cuda") for side in sides}
    if steps is None:
        clock = clocks["ours"]
        t, _ = clock(lambda: ours(0), 1)
        steps = max(1, min(50, math.ceil(ROUND_S / t)))
    counter = itertools.count(WARMUP + 1)
    times = {k: [] for k in sides}
    for r in range(rounds):
        for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            sides[side](next(counter))  # one untimed step after the switch: the other library's threads settle
            times[side].append(clocks[side](lambda: sides[side](next(counter)), steps)[0])
    peak = peaks.get(row["device"], {}).get("peak_gflops")
    row.update(rounds=rounds, steps=steps, tokens_per_s={}, mfu={}, gflops={})
    for side, ts in times.items():
        row[side] = summarize(ts)
        t = row[side]["median_ms"] / 1e3
        row["tokens_per_s"][side] = tokens / t
        row["gflops"][side] = row["flops_per_step"] / t / 1e9
        row["mfu"][side] = row["gflops"][side] / peak if peak else None
    if "torch" in times:
        ratios = row["ratio_rounds"] = [a / b for a, b in zip(times["ours"], times["torch"])]
        row["ratio_median"] = statistics.median(ratios)
        row["ratio_ci95"] = [float(v) for v in np.percentile(bootstrap(ratios), [2.5, 97.5])]
        third = len(ratios) // 3  # the rounds' ratios drifting (a machine that got busier) is flagged
        if third >= 2 and abs(statistics.median(ratios[-third:]) - statistics.median(ratios[:third])) > 0.05:
            row["ratio_flags"] = ["drift"]
    return row


def run(backends, configs, rounds, steps, torch, peaks, progress, notes):
    """Every (config, backend): checked, then timed in interleaved rounds. Returns the rows."""
    from tqdm import tqdm

    if configs is None:
        configs = TRAIN_CONFIGS
    elif not isinstance(configs, dict):
        configs = {n: TRAIN_CONFIGS[n] for n in configs}
    notes.append(f"train: {rounds} interleaved A/B rounds, {WARMUP} warm-up steps; MFU against the measured "
                 f"GEMM peak")
    cases = [(n, b) for n in configs for b in backends]
    rows = []
    for name, backend in tqdm(cases, file=sys.stderr, disable=not progress, desc="bench train", unit="config"):
        rows.append(run_config(name, configs[name], backend, rounds, steps, torch, peaks))
    return rows


def _ratio(r) -> str:
    if r.get("ratio_median") is None:
        return ""
    ci = r.get("ratio_ci95")
    return (f"{r['ratio_median']:.2f}" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "")
            + "".join(f" ⚠ {f}" for f in r.get("ratio_flags", [])))


def train_markdown(rows) -> str:
    from .tables import fmt_time

    head = ("| config | model | backend | params | tokens/step | check | ours per step | torch per step "
            "| ours/torch (median of rounds, 95% CI) | ours tokens/s | torch tokens/s | ours MFU | torch MFU |")
    out = ["### training step (forward + backward + clip + AdamW, float32)", "", head, "|" + "---|" * 13]
    for r in rows:
        c = r["model"]
        model = " ".join(f"{k}{c[key]}" for k, key in zip("LHCTBV", ("n_layer", "n_head", "n_embd", "block_size",
                                                                      "batch_size", "vocab_size")))
        ms = fmt_time
        g = lambda d, k, spec: "" if d.get(k) is None else format(d[k], spec)  # noqa: E731
        cells = [r["config"], model, r["backend"], f"{r['params'] / 1e6:.2f} M", str(r["tokens_per_step"]),
                 "ok" if r["check"]["ok"] else f"FAIL: {r['check']['reason']}", ms(r["ours"]), ms(r["torch"]),
                 _ratio(r), g(r.get("tokens_per_s", {}), "ours", ",.0f"),
                 g(r.get("tokens_per_s", {}), "torch", ",.0f"), g(r.get("mfu", {}), "ours", ".1%"),
                 g(r.get("mfu", {}), "torch", ".1%")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
