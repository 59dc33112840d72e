"""A simulated GPU for the bench's GPU clocks, where no GPU is: one virtual timeline shared by a host and a device.

The host's clock advances by each launch's CPU cost; the device runs the launched kernels in order, each
starting when the host has launched it and the device has finished the one before (a kernel shorter than its
launch leaves the device idle: the launch rate is what two events then see). An event completes when the device
reaches it; ``synchronize`` moves the host to that time. A stream in capture mode records kernels instead of
running them, and a graph replays them back to back after one launch. Stand-ins for ``cupy`` and ``torch``
expose the parts of their APIs that ``bench.timing`` uses, over that timeline. Streams share the one timeline
(no overlap is modelled), but every event, kernel and graph launch is logged with the stream it went to, so a
test can check that a replay, its events and the flush share one stream; torch refuses to capture on the
default stream, as the real one does.
"""

from __future__ import annotations

import types

import numpy as np


class Timeline:
    def __init__(self, launch_s=10e-6, graph_launch_s=5e-6):
        self.host = 0.0  # seconds
        self.device_free = 0.0  # when the device finishes what it was given
        self.launch_s, self.graph_launch_s = launch_s, graph_launch_s
        self.capturing = None  # a list of kernel durations while a stream captures
        self.kernels_run = 0
        self.allocated = []  # bytes of each array made (the flush buffer)
        self.current = "legacy"  # the current stream's name
        self.log = []  # (what, stream): every kernel, event and graph launch in order

    def now(self):
        return self.host

    def spend(self, seconds):
        """Host work that launches nothing (Python between the launches)."""
        self.host += seconds

    def kernel(self, seconds):
        """Launch a kernel that runs ``seconds`` on the device."""
        self.host += self.launch_s
        if self.capturing is not None:
            self.capturing.append(seconds)
            return
        self.device_free = max(self.host, self.device_free) + seconds
        self.kernels_run += 1
        self.log.append(("kernel", self.current))

    def sync_point(self):
        """A call that waits for the device (``.get()``, ``float(...)``): illegal while capturing."""
        if self.capturing is not None:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.host = max(self.host, self.device_free)

    def graph_launch(self, durations, stream=None):
        self.log.append(("graph", stream.name if stream is not None else self.current))
        self.host += self.graph_launch_s
        self.device_free = max(self.host, self.device_free) + sum(durations)
        self.kernels_run += len(durations)


class Event:
    def __init__(self, timeline, **_):
        self.timeline, self.t = timeline, None

    def record(self, stream=None):
        tl = self.timeline
        tl.log.append(("event", stream.name if stream is not None else tl.current))
        self.t = max(tl.host, tl.device_free)  # reached once everything before it has run
        tl.device_free = self.t

    def synchronize(self):
        self.timeline.host = max(self.timeline.host, self.t)

    def elapsed_time(self, end):  # torch's spelling
        return 1e3 * (end.t - self.t)


def _stream(timeline):
    count = iter(range(1, 1000))

    class Stream:
        def __init__(self, *_, name=None, **__):
            self.name = name or f"stream{next(count)}"

        def __enter__(self):
            self.outer, timeline.current = timeline.current, self.name
            return self

        def __exit__(self, *exc):
            timeline.current = self.outer
            return False

        def __eq__(self, other):
            return isinstance(other, Stream) and other.name == self.name

        __hash__ = object.__hash__

        def synchronize(self):
            timeline.sync_point()

        def begin_capture(self):
            timeline.capturing = []

        def end_capture(self):
            durations, timeline.capturing = timeline.capturing, None
            return types.SimpleNamespace(launch=lambda stream=None: timeline.graph_launch(durations, stream))

        def wait_stream(self, other):
            pass
    return Stream


def fake_cupy(timeline):
    """``cupy`` as far as ``bench.timing`` uses it: events, streams with capture, graphs, an array to fill."""
    cuda = types.SimpleNamespace(Event=lambda **kw: Event(timeline, **kw), Stream=_stream(timeline),
                                 get_elapsed_time=lambda a, b: 1e3 * (b.t - a.t))
    buffer = types.SimpleNamespace(fill=lambda v: timeline.kernel(100e-6))  # the L2 flush: a 100 us kernel

    def empty(n, dtype=None):
        timeline.allocated.append(n * np.dtype(dtype).itemsize)
        return buffer
    return types.SimpleNamespace(cuda=cuda, float32=np.float32, empty=empty)


def fake_torch(timeline):
    """``torch`` as far as ``bench.timing`` uses it: CUDA events, streams, CUDA graphs (captured on a side stream
    only, as torch requires)."""
    Stream = _stream(timeline)
    legacy = Stream(name="legacy")
    streams = {"legacy": legacy}

    def current_stream():
        return streams.setdefault(timeline.current, Stream(name=timeline.current))

    class CUDAGraph:
        durations = ()

        def capture_begin(self):
            if timeline.current == "legacy":
                raise RuntimeError("CUDA graphs must be captured on a non-default stream.")
            timeline.capturing = []

        def capture_end(self):
            self.durations, timeline.capturing = timeline.capturing, None

        def replay(self):
            timeline.graph_launch(self.durations)

    def stream(s):
        streams[s.name] = s
        return s

    cuda = types.SimpleNamespace(Event=lambda enable_timing=False: Event(timeline), Stream=Stream,
                                 CUDAGraph=CUDAGraph, stream=stream, current_stream=current_stream,
                                 default_stream=lambda: legacy, synchronize=timeline.sync_point)
    zeroed = types.SimpleNamespace(zero_=lambda: timeline.kernel(100e-6))

    def empty(n, dtype=None, device=None):
        timeline.allocated.append(n * np.dtype(dtype).itemsize)
        return zeroed
    return types.SimpleNamespace(cuda=cuda, float32=np.float32, empty=empty)
