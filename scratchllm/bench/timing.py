"""How ``scratchllm bench`` times a call: clocks for the CPU and the GPU (CUDA events), sampling by time (a warm-up
of at least ``WARMUP_S``, then samples until ``MIN_TIME_S`` is spent), the summary of the samples (median, IQR,
a bootstrap 95 % confidence interval of the median, drift, flags), ratios with their intervals, and an L2 flush.
The suites (``ops.py``, ``train.py``) and the machine peaks (``__init__.py``) all time through here."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

MIN_REPEAT_S = 2e-3  # a CPU sample lasts at least this long (more calls per sample for tiny ops)
WARMUP_S = 0.025  # calls before the samples, for at least this long (caches, allocator, page faults, compiles)
MIN_TIME_S = 0.2  # samples until this much time is spent (and at least ``repeats`` of them)
MAX_SAMPLES = 400
QUICK = {"warmup_s": 0.005, "min_time_s": 0.02}  # ``--quick``: a short look, said so in the output
NOISY = 0.10  # IQR / median above this: the measurement is flagged "noisy"
DRIFT = 0.10  # |median of the last third - median of the first third| / median above this: flagged "drift"
BIMODAL = 2.0  # median above this many times the fastest sample: flagged "bimodal" (a contended CPU: OpenMP
# regions that wait for a scheduler tick time at multiples of it, tightly, and far above the fast mode)
BOOTSTRAP = 1000  # resamples for a confidence interval


def import_torch():
    """torch, or None when it is not installed (tests hide it with ``sys.modules['torch'] = None``)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


# --------------------------------------------------------------------------------------------- clocks
def make_clock(device: str):
    """``clock(fn, number) -> seconds per call`` for ``device``: "cpu", "cupy" or "cuda" (torch)."""
    if device == "cpu":
        def clock(fn, number):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            return (time.perf_counter() - t0) / number
        return clock
    if device == "cupy":
        import cupy

        event, elapsed_ms = cupy.cuda.Event, cupy.cuda.get_elapsed_time
    elif device == "cuda":
        import torch

        def event():
            return torch.cuda.Event(enable_timing=True)

        def elapsed_ms(a, b):
            return a.elapsed_time(b)
    else:
        raise ValueError(f"unknown device {device!r}")

    def gpu_clock(fn, number):
        start, end = event(), event()
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return elapsed_ms(start, end) / 1e3 / number
    return gpu_clock


def l2_flusher(device: str, mb: int = 256):
    """A function that overwrites an ``mb`` MB buffer (evicting the caches: the GPU's L2, or the CPU's LLC)."""
    if device == "cupy":
        import cupy

        buf = cupy.empty(mb * 2**20 // 4, dtype=cupy.float32)
        return lambda: buf.fill(0)
    if device == "cuda":
        import torch

        buf = torch.empty(mb * 2**20 // 4, dtype=torch.float32, device="cuda")
        return buf.zero_
    buf = np.empty(mb * 2**20 // 4, dtype=np.float32)
    return lambda: buf.fill(0)


def measure(fn, device="cpu", repeats=7, flush=None, min_time_s=None, warmup_s=None) -> dict:
    """Warm up for ``warmup_s``, then time samples of ``fn`` until ``min_time_s`` is spent and at least
    ``repeats`` samples are taken; per-call seconds summarised (``summarize``). A sample is ``number`` calls,
    enough to last ``MIN_REPEAT_S`` on the CPU; with ``flush`` (run before each sample, untimed) one call."""
    warmup_s = WARMUP_S if warmup_s is None else warmup_s
    min_time_s = MIN_TIME_S if min_time_s is None else min_time_s
    clock = make_clock(device)
    spent, calls, t = 0.0, 0, 0.0
    while calls < 2 or spent < warmup_s:  # the first call pays for caches, page faults and compiles
        t = clock(fn, 1)
        spent, calls = spent + t, calls + 1
    number = 1 if flush or t >= MIN_REPEAT_S else min(100_000, math.ceil(MIN_REPEAT_S / max(t, 1e-8)))
    samples, spent = [], 0.0
    while len(samples) < repeats or (spent < min_time_s and len(samples) < MAX_SAMPLES):
        if flush:
            flush()
        s = clock(fn, number)
        samples.append(s)
        spent += s * number
    return summarize(samples, number)


def bootstrap(samples, stat=np.median, n=BOOTSTRAP, seed=0, groups=None):
    """``n`` values of ``stat`` over resamples (with replacement) of ``samples``; seeded, so reproducible.
    ``groups``: the sizes of consecutive groups of samples (one per worker process): then the groups are
    resampled first and the samples within each chosen group, so that the interval also holds the spread
    between processes, not only within one."""
    s = np.asarray(samples, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if not groups or len(groups) < 2:
        return stat(s[rng.integers(0, s.size, (n, s.size))], axis=1)
    starts = np.cumsum([0, *groups[:-1]])
    out = np.empty(n)
    for i in range(n):
        picked = rng.integers(0, len(groups), len(groups))
        out[i] = stat(np.concatenate([s[starts[g] + rng.integers(0, groups[g], groups[g])] for g in picked]))
    return out


def summarize(samples, number=1, groups=None) -> dict:
    """Median, IQR, min, the 95 % bootstrap interval of the median, drift (last third against first) and the
    flags ``noisy``/``drift`` of per-call seconds; every sample kept (ms). ``groups``: see ``bootstrap``."""
    s = np.asarray(samples, dtype=np.float64)
    q1, med, q3 = np.percentile(s, [25, 50, 75]) if s.size > 1 else (s[0],) * 3
    lo, hi = np.percentile(bootstrap(s, groups=groups), [2.5, 97.5]) if s.size > 1 else (s[0], s[0])
    third = s.size // 3
    drift = abs(statistics.median(s[-third:]) - statistics.median(s[:third])) / med if third >= 2 else 0.0
    flags = [name for name, bad in (("noisy", (q3 - q1) / med > NOISY), ("drift", drift > DRIFT),
                                    ("bimodal", s.size >= 5 and med > BIMODAL * s.min())) if bad]
    return {"median_ms": 1e3 * float(med), "iqr_ms": 1e3 * float(q3 - q1), "min_ms": 1e3 * float(s.min()),
            "ci95_ms": [1e3 * float(lo), 1e3 * float(hi)], "drift": round(float(drift), 4), "flags": flags,
            "repeats": int(s.size), "number": number, "samples_ms": [round(1e3 * v, 6) for v in s]}


def ratio_ci(ours, theirs, seed=0) -> dict:
    """``sum of medians(ours) / sum of medians(theirs)`` with its 95 % bootstrap interval; ``ours`` and ``theirs``
    are lists of summaries (fwd, bwd: their sum is the fwd+bwd time), each resampled on its own."""
    def total(sides, k):
        return sum(bootstrap(t["samples_ms"], seed=seed + k + j, groups=t.get("process_sizes"))
                   for j, t in enumerate(sides))

    value = sum(t["median_ms"] for t in ours) / sum(t["median_ms"] for t in theirs)
    lo, hi = np.percentile(total(ours, 0) / total(theirs, 100), [2.5, 97.5])
    return {"ratio": float(value), "ci95": [float(lo), float(hi)]}
