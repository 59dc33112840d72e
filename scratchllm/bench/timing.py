"""How ``scratchllm bench`` times a call: clocks for the CPU and the GPU (CUDA events), warm-up and calibration of
the calls per repeat, the summary of the repeats (median, IQR, min, every sample), and an L2 flush. The suites
(``ops.py``, ``train.py``) and the machine peaks (``__init__.py``) all time through here."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

MIN_REPEAT_S = 2e-3  # a CPU repeat lasts at least this long (more calls per repeat for tiny ops)


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
    """A function that overwrites an ``mb`` MB device buffer (evicting L2), or None on the CPU."""
    if device == "cupy":
        import cupy

        buf = cupy.empty(mb * 2**20 // 4, dtype=cupy.float32)
        return lambda: buf.fill(0)
    if device == "cuda":
        import torch

        buf = torch.empty(mb * 2**20 // 4, dtype=torch.float32, device="cuda")
        return buf.zero_
    return None


def measure(fn, device="cpu", repeats=7, flush=None) -> dict:
    """Warm up, then time ``fn`` ``repeats`` times; per-call seconds summarised (median, IQR, min)."""
    clock = make_clock(device)
    t = clock(fn, 1)  # warm-up: caches, allocator, kernel compilation on a GPU
    if t < 0.25 or device != "cpu":  # calibrate on a warm call (a slow CPU call is its own calibration)
        t = clock(fn, 1)
    number = 1 if flush or t >= MIN_REPEAT_S else min(100_000, math.ceil(MIN_REPEAT_S / max(t, 1e-8)))
    if number > 1:  # warm-up at the timed rhythm
        clock(fn, number)
    samples = []
    for _ in range(repeats):
        if flush:
            flush()
        samples.append(clock(fn, number))
    return summarize(samples, number)


def summarize(samples, number=1) -> dict:
    q1, _, q3 = np.percentile(samples, [25, 50, 75]) if len(samples) > 1 else (samples[0],) * 3
    return {"median_ms": 1e3 * statistics.median(samples), "iqr_ms": 1e3 * float(q3 - q1),
            "min_ms": 1e3 * min(samples), "repeats": len(samples), "number": number,
            "samples_ms": [round(1e3 * s, 6) for s in samples]}
