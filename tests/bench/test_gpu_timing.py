"""The bench's GPU clocks on a simulated GPU (``fake_gpu.py``): device time while the GPU is busy, the host's
enqueueing time, the launch-bound flag, CUDA-graph replays, an op that cannot be captured, the L2 flush; for
CuPy ("cupy") and torch ("cuda") alike. What a real GPU adds (the libraries' own capture rules, the real launch
and event costs) is measured in the GPU run of the bench."""

import pytest

from scratchllm.bench import isolate, timing
from tests.bench.fake_gpu import Timeline, fake_cupy, fake_torch

FAKES = {"cupy": ("cupy", fake_cupy), "cuda": ("torch", fake_torch)}
SHORT = dict(repeats=5, warmup_s=0.0, min_time_s=0.0)


@pytest.fixture(params=sorted(FAKES))
def gpu(request, monkeypatch):
    """(device, timeline): the library's module replaced by the stand-in, the host clock by the timeline's; torch
    on a side stream, as the bench's torch worker runs (isolate.py)."""
    device = request.param
    module, make = FAKES[device]
    timeline = Timeline(launch_s=10e-6, graph_launch_s=5e-6)
    fake = make(timeline)
    monkeypatch.setitem(__import__("sys").modules, module, fake)
    monkeypatch.setattr(timing, "perf_counter", timeline.now)
    monkeypatch.setattr(timing, "CAPTURE_BROKEN", {})
    if device == "cuda":
        with fake.cuda.stream(fake.cuda.Stream(name="side")):
            yield device, timeline
    else:
        yield device, timeline


def test_a_long_kernel_times_the_device_and_reports_the_hosts_enqueueing(gpu):
    device, tl = gpu
    t = timing.measure(lambda: tl.kernel(500e-6), device, **SHORT)
    assert t["median_ms"] == pytest.approx(0.5, rel=1e-6)  # the kernel, not its 10 us launch
    assert t["host_ms"] == pytest.approx(0.010, rel=1e-6)
    assert "launch-bound" not in t["flags"] and t["number"] == 4  # 2 ms per sample


def test_a_kernel_shorter_than_its_launch_is_flagged_and_its_graph_replay_times_the_kernel(gpu):
    device, tl = gpu
    t = timing.measure(lambda: tl.kernel(2e-6), device, graph=True, **SHORT)
    assert t["median_ms"] == pytest.approx(0.010, rel=1e-6)  # the events see the launch rate ...
    assert "launch-bound" in t["flags"] and t["number"] == timing.MAX_GPU_NUMBER
    g = t["graph"]  # ... the graph's kernels run back to back, 2 us each (its launch hidden behind a lead replay)
    assert g["median_ms"] == pytest.approx(0.002, rel=1e-6)
    assert g["captured_calls"] == timing.MAX_GPU_NUMBER and g["repeats"] >= 5


def test_python_between_launches_is_host_time_and_the_graph_leaves_it_out(gpu):
    """Three kernels with 20 us of Python between them: 3 x 10 us launches + 40 us on the host per call."""
    device, tl = gpu

    def op():
        for _ in range(3):
            tl.kernel(5e-6)
            tl.spend(20e-6)
    t = timing.measure(op, device, graph=True, **SHORT)
    assert t["host_ms"] == pytest.approx(0.090, rel=1e-6) and t["median_ms"] == pytest.approx(0.090, rel=1e-6)
    assert "launch-bound" in t["flags"]
    assert t["graph"]["median_ms"] == pytest.approx(0.015, rel=1e-6)


def test_a_call_that_waits_for_the_device_is_not_capturable_and_says_so(gpu):
    device, tl = gpu

    def op():  # a kernel, then a value read on the host (as float(xp.sum(x)) does)
        tl.kernel(50e-6)
        tl.sync_point()
    t = timing.measure(op, device, graph=True, **SHORT)
    assert t["median_ms"] == pytest.approx(0.060, rel=1e-6)  # the device idles while the host launches
    assert t["graph"]["error"].startswith("not capturable: RuntimeError: operation not permitted")
    assert tl.capturing is None  # capture mode was left


def test_the_flush_keeps_the_device_busy_so_a_launch_bound_call_times_its_kernel(gpu):
    """triton's do_bench effect: the 100 us flush kernel runs while the host enqueues the event and the call."""
    device, tl = gpu
    flush = timing.l2_flusher(device)
    assert tl.allocated == [256 * 2**20]
    t = timing.measure(lambda: tl.kernel(2e-6), device, flush=flush, **SHORT)
    assert t["number"] == 1 and t["median_ms"] == pytest.approx(0.002, rel=1e-6)
    assert "launch-bound" in t["flags"]  # in a loop it would be: the host takes 10 us a call


def test_the_replay_its_events_and_the_flush_share_one_stream(gpu):
    """A replay on the capturing (non-blocking) stream would not wait for the flush on the current one."""
    device, tl = gpu
    current = tl.current
    t = timing.measure(lambda: tl.kernel(50e-6), device, flush=timing.l2_flusher(device), graph=True, **SHORT)
    assert "error" not in t["graph"]
    assert {stream for what, stream in tl.log if what in ("event", "graph")} == {current}
    assert sum(what == "graph" for what, _ in tl.log) >= 5


def test_torch_captures_on_a_side_stream_only_and_stops_after_a_failed_capture(monkeypatch):
    import sys

    tl = Timeline()
    torch = fake_torch(tl)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setattr(timing, "perf_counter", tl.now)
    monkeypatch.setattr(timing, "CAPTURE_BROKEN", {})
    t = timing.measure(lambda: tl.kernel(50e-6), "cuda", graph=True, **SHORT)  # on the default stream
    assert "side stream only" in t["graph"]["error"]

    def fails():
        tl.kernel(50e-6)
        tl.sync_point()
    with torch.cuda.stream(torch.cuda.Stream()):
        t = timing.measure(fails, "cuda", graph=True, **SHORT)
        assert t["graph"]["error"].startswith("not capturable: RuntimeError: operation not permitted")
        assert tl.capturing is None  # capture_end was called
        t = timing.measure(lambda: tl.kernel(50e-6), "cuda", graph=True, **SHORT)
    assert t["graph"] == {"error": "not captured: an earlier torch capture failed in this process"}


def test_worker_processes_pool_host_time_and_graphs():
    def summary(median_us, host_us, graph_us=None):
        s = timing.summarize([median_us * 1e-6 * (1 + 0.001 * i) for i in range(6)], 10)
        s = timing.mark_launch_bound(s, host_us * 1e-3)
        if graph_us:
            s["graph"] = {**timing.summarize([graph_us * 1e-6] * 6, 10), "captured_calls": 10}
        return s
    pooled = isolate._pool([summary(10, 9.5, 2), summary(10, 9.8, 2.2)])
    assert pooled["host_ms"] == pytest.approx(0.00965) and "launch-bound" in pooled["flags"]
    assert pooled["graph"]["median_ms"] == pytest.approx(0.0021) and pooled["graph"]["captured_calls"] == 10
    failed = dict(summary(10, 1), graph={"error": "not capturable: X"})
    pooled = isolate._pool([summary(10, 1, 2), failed])
    assert pooled["graph"] == {"error": "not capturable: X"} and "launch-bound" not in pooled["flags"]


def test_the_gpu_table_shows_device_host_and_graph_times_and_why_a_graph_is_missing():
    from scratchllm.bench.tables import ops_markdown

    def t(median_us, host_us=None, graph=None):
        s = timing.summarize([median_us * 1e-6] * 6)
        if host_us is not None:
            timing.mark_launch_bound(s, host_us * 1e-3)
        if graph is not None:
            s["graph"] = graph
        return s
    row = {"op": "gelu", "sizes": {"N": 4, "C": 8}, "backend": "cupy", "device": "gpu", "dtype": "float32",
           "shapes": "tiny", "check": {"ok": True}, "impl": {"fwd": "cuda", "bwd": "cuda"},
           "fwd": t(10, 9.5, t(2)), "bwd": t(30, 5, {"error": "not capturable: RuntimeError: sync"}),
           "torch": {"fwd": t(12, 11), "bwd": t(20, 12)}}
    cpu = {**row, "backend": "numpy", "device": "cpu", "fwd": t(50), "bwd": t(60), "torch": None}
    text = ops_markdown([cpu, row])
    lines = [x for x in text.splitlines() if x.startswith("| gelu")]
    assert len(lines) == 4  # the main table's two rows, the GPU table's ours and torch
    ours, theirs = ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
    assert ours[2:] == ["cuda", "ours", "10 µs (10-10) ⚠ launch-bound", "9.5 µs", "2 µs (2-2)",
                        "30 µs (30-30)", "5 µs", "not capturable"]
    assert theirs[2:] == ["torch CUDA", "torch", "12 µs (12-12) ⚠ launch-bound", "11 µs", "", "20 µs (20-20)",
                          "12 µs", ""]
    assert "GPU times per call" in text
    assert "GPU times per call" not in ops_markdown([cpu])
