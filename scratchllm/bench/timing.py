"""How ``scratchllm bench`` times a call: clocks for the CPU and the GPU (CUDA events), sampling by time (a warm-up
of at least ``WARMUP_S``, then samples until ``MIN_TIME_S`` is spent), the summary of the samples (median, IQR,
a bootstrap 95 % confidence interval of the median, drift, flags), ratios with their intervals, and an L2 flush.
The suites (``ops.py``, ``train.py``) and the machine peaks (``__init__.py``) all time through here.

On a GPU a sample is ``number`` calls between two CUDA events, so it is the device's time only while the GPU
stays busy; a short kernel whose Python launch takes longer than the kernel leaves the GPU idle between calls,
and the events then measure the launch rate. So every GPU summary also has ``host_ms``, the CPU time per call
spent enqueueing the work (what the loop costs the host, not waiting for the GPU), and the flag ``launch-bound``
when that is at least ``LAUNCH_BOUND`` of the GPU time. ``graph=True`` (``--cuda-graph``) also times the calls
captured into one CUDA graph and replayed: the kernels back to back with one launch, the device's own time
(``summary["graph"]``; an op that cannot be captured, one that synchronises with the host, says why). CUDA
events resolve about 0.5 us: a sample of one short call (with ``--flush-l2``) is that coarse."""

from __future__ import annotations

import math
import statistics
from time import perf_counter  # the host clock (a test's simulated GPU replaces it with its own)
from types import SimpleNamespace

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
LAUNCH_BOUND = 0.9  # a GPU call whose enqueueing takes this share of its GPU time: the GPU waits on the host
MAX_GPU_NUMBER = 100  # calls per GPU sample at most (a longer queue blocks the host and hides the launch cost)


def import_torch():
    """torch, or None when it is not installed (tests hide it with ``sys.modules['torch'] = None``)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


# --------------------------------------------------------------------------------------------- clocks
CAPTURE_BROKEN = {}  # device -> why: a capture failed in this process, and may have left the library's state broken


def gpu_api(device: str):
    """What the GPU clocks need of CuPy (``device="cupy"``) or torch (``"cuda"``): ``event()``,
    ``elapsed_ms(start, end)`` and ``capture(fn, number) -> replay``, which records ``number`` calls of ``fn``
    into one CUDA graph (after one call on the capturing stream, as both libraries ask). ``replay()`` launches
    it on the current stream, where the events and the flush are: a replay is ordered after the flush."""
    if device == "cupy":
        import cupy

        def capture(fn, number):
            stream = cupy.cuda.Stream(non_blocking=True)
            with stream:
                fn()  # fills this stream's share of the memory pool, which the captured calls then reuse
                stream.synchronize()
                stream.begin_capture()  # relaxed mode (CuPy's default): the pool may still allocate
                try:
                    for _ in range(number):
                        fn()
                except BaseException:
                    _end_quietly(stream.end_capture)
                    raise
                graph = stream.end_capture()
            return graph.launch  # stream=None: the current stream

        return SimpleNamespace(event=cupy.cuda.Event, elapsed_ms=cupy.cuda.get_elapsed_time, capture=capture)
    if device == "cuda":
        import torch

        def capture(fn, number):
            # torch captures on a side stream only, and autograd runs a backward on its forward's stream: so the
            # bench's torch worker runs each whole case (inputs, forward graph, timing) on a side stream
            if torch.cuda.current_stream() == torch.cuda.default_stream():
                raise RuntimeError("torch captures CUDA graphs on a side stream only (run under torch.cuda.stream)")
            fn()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            graph.capture_begin()  # on the current (side) stream, into the graph's own memory pool
            try:
                for _ in range(number):
                    fn()
            except BaseException:
                _end_quietly(graph.capture_end)
                CAPTURE_BROKEN["cuda"] = "an earlier torch capture failed in this process"
                raise
            graph.capture_end()
            return graph.replay  # on the current stream

        return SimpleNamespace(event=lambda: torch.cuda.Event(enable_timing=True),
                               elapsed_ms=lambda a, b: a.elapsed_time(b), capture=capture)
    raise ValueError(f"unknown device {device!r}")


def _end_quietly(end_capture):
    try:
        end_capture()  # leave capture mode; the capture was invalidated by the failing call
    except Exception:
        pass


def make_clock(device: str):
    """``clock(fn, number, lead=True) -> (seconds per call, host seconds per call)`` for ``device``: "cpu",
    "cupy" or "cuda" (torch). On the CPU the two are the same; on a GPU the first is the time between two CUDA
    events around the ``number`` calls (on the current stream), the second the CPU time the calls took to
    enqueue (wall time: a call that blocks, on a synchronisation or an allocation, counts its wait). ``lead``:
    one untimed call before the first event, which keeps the device busy while the host enqueues the first timed
    call, so an idle device's wait for it is not timed (the flush does that instead when there is one: a lead
    call would warm the caches it emptied)."""
    if device == "cpu":
        def clock(fn, number, lead=False):
            t0 = perf_counter()
            for _ in range(number):
                fn()
            t = (perf_counter() - t0) / number
            return t, t
        return clock
    api = gpu_api(device)

    def gpu_clock(fn, number, lead=True):
        start, end = api.event(), api.event()
        if lead:
            fn()
        start.record()
        t0 = perf_counter()
        for _ in range(number):
            fn()
        host = perf_counter() - t0
        end.record()
        end.synchronize()
        return api.elapsed_ms(start, end) / 1e3 / number, host / number
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


def measure(fn, device="cpu", repeats=7, flush=None, min_time_s=None, warmup_s=None, graph=False) -> dict:
    """Warm up for ``warmup_s``, then time samples of ``fn`` until ``min_time_s`` is spent and at least
    ``repeats`` samples are taken; per-call seconds summarised (``summarize``). A sample is ``number`` calls,
    enough to last ``MIN_REPEAT_S`` (at most ``MAX_GPU_NUMBER`` on a GPU); with ``flush`` (run before each
    sample, untimed) one call. On a GPU: ``host_ms`` and, with ``graph``, the CUDA-graph replay's summary."""
    warmup_s = WARMUP_S if warmup_s is None else warmup_s
    min_time_s = MIN_TIME_S if min_time_s is None else min_time_s
    clock = make_clock(device)
    spent, calls, t = 0.0, 0, 0.0
    while calls < 2 or spent < warmup_s:  # the first call pays for caches, page faults and compiles
        t, _ = clock(fn, 1)
        spent, calls = spent + t, calls + 1
    most = 100_000 if device == "cpu" else MAX_GPU_NUMBER
    number = 1 if flush or t >= MIN_REPEAT_S else min(most, math.ceil(MIN_REPEAT_S / max(t, 1e-8)))
    samples, hosts = _sample(lambda: clock(fn, number, lead=not flush), number, repeats, min_time_s, flush)
    out = summarize(samples, number)
    if device != "cpu":
        mark_launch_bound(out, 1e3 * statistics.median(hosts))
        if graph:
            out["graph"] = _measure_graph(fn, device, number, repeats, min_time_s, flush)
    return out


def _sample(timed, number, repeats, min_time_s, flush):
    samples, hosts, spent = [], [], 0.0
    while len(samples) < repeats or (spent < min_time_s and len(samples) < MAX_SAMPLES):
        if flush:
            flush()
        s, h = timed()
        samples.append(s)
        hosts.append(h)
        spent += s * number
    return samples, hosts


def mark_launch_bound(summary: dict, host_ms: float) -> dict:
    """A GPU summary's ``host_ms`` and, when the host's enqueueing takes ``LAUNCH_BOUND`` of the GPU time or
    more, the flag ``launch-bound``: calls back to back would leave the GPU waiting on Python. In a sample of
    several calls the events then time the launches, not the kernels; with a flush (one call per sample,
    queued behind the flush) the median is still the kernel's own time."""
    summary["host_ms"] = host_ms
    summary["flags"] = [f for f in summary["flags"] if f != "launch-bound"]
    if host_ms >= LAUNCH_BOUND * summary["median_ms"]:
        summary["flags"].append("launch-bound")
    return summary


def _measure_graph(fn, device, number, repeats, min_time_s, flush):
    """``number`` calls captured into one CUDA graph, a replay per sample (one launch: the kernels' own time)."""
    if device in CAPTURE_BROKEN:
        return {"error": f"not captured: {CAPTURE_BROKEN[device]}"}
    api = gpu_api(device)
    try:
        replay = api.capture(fn, number)
    except Exception as e:  # a call that synchronises, copies to the host or allocates outside a pool
        return {"error": f"not capturable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    clock = make_clock(device)
    clock(replay, 1)  # the first replay instantiates and uploads the graph
    samples, _ = _sample(lambda: clock(replay, 1, lead=not flush), 1, repeats, min_time_s, flush)  # s per replay
    out = summarize([s / number for s in samples], number)
    out["captured_calls"] = number
    return out


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
