"""Backend selection: NumPy on the CPU, CuPy on a GPU, one source for both.

This is the ONLY module (besides ``kernels/``) that imports cupy. Ops get their array module from the
arrays they are given (``xp = get_xp(x)``) and call the helpers below for the few things NumPy and CuPy
spell differently (scatter-add, erf, copying to the host, waiting for the device).

Backend names: ``"auto"`` (CuPy when it imports AND a device really works, otherwise NumPy, with one log
line saying why), ``"numpy"``, ``"cupy"`` (an error when no usable GPU is present; never a silent
fallback). The environment variable ``SCRATCHLLM_BACKEND`` gives the default for ``backend=None``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys

import numpy as np

log = logging.getLogger("scratchllm")

BACKENDS = ("auto", "numpy", "cupy")
ENV_VAR = "SCRATCHLLM_BACKEND"


class BackendError(RuntimeError):
    """The requested backend cannot be used here."""


def _is_cupy_array(a) -> bool:
    # Look at the type's module instead of importing cupy: keeps NumPy-only callers fast and cupy-free.
    return type(a).__module__.split(".")[0] == "cupy"


def get_xp(*arrays):
    """Return the array module (``cupy`` or ``numpy``) for the given arrays.

    ``cupy`` if any argument is a CuPy array, else ``numpy``; ``None`` arguments are ignored.
    """
    for a in arrays:
        if a is not None and type(a) is not np.ndarray and _is_cupy_array(a):
            import cupy

            return cupy
    return np


@functools.lru_cache(maxsize=1)
def cupy_status() -> tuple[bool, str]:
    """``(usable, reason)``: whether CuPy imports AND a device really computes.

    ``cupy.cuda.is_available()`` alone is not enough: on some machines cupy imports and reports a device
    count, then fails on the first allocation or kernel launch (no driver, no libcuda, no nvrtc).
    So we allocate, launch a kernel and synchronize, and report the first error.
    """
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken install raising something else
        return False, f"cupy is not importable ({type(e).__name__}: {e})".strip()
    try:
        if not cupy.cuda.is_available():
            return False, "cupy imports but reports no CUDA device"
        a = cupy.arange(4, dtype=cupy.float32)
        total = float((a * 2).sum())  # allocation + elementwise kernel + reduction + device-to-host copy
        cupy.cuda.Device().synchronize()
        if total != 12.0:
            return False, f"cupy computed a wrong result on the device ({total} != 12.0)"
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        return False, f"cupy imports but the GPU is not usable ({type(e).__name__}: {first})"
    return True, "a CUDA device is usable"


def cupy_usable() -> bool:
    """True when CuPy imports and a CUDA device really works."""
    return cupy_status()[0]


def resolve_backend(backend: str | None = None) -> str:
    """Turn ``"auto" | "numpy" | "cupy" | None`` into ``"numpy"`` or ``"cupy"``.

    ``None`` reads ``SCRATCHLLM_BACKEND`` (default ``"auto"``). Raises ``ValueError`` for an unknown
    name and ``BackendError`` when ``"cupy"`` is asked for without a usable GPU.
    """
    source = "backend"
    if backend is None:
        backend, source = os.environ.get(ENV_VAR, "auto") or "auto", ENV_VAR
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}; got {backend!r}")
    backend = backend.lower()
    if backend == "numpy":
        return "numpy"
    usable, reason = cupy_status()
    if backend == "cupy":
        if not usable:
            raise BackendError(f"{source}='cupy' was requested but {reason}")
        return "cupy"
    if not usable:
        _log_auto_fallback(reason)
        return "numpy"
    return "cupy"


@functools.lru_cache(maxsize=1)
def _log_auto_fallback(reason: str) -> None:
    log.info("backend auto: using numpy because %s", reason)  # once per process


def xp_for(backend: str | None = None):
    """The array module for a backend name (see ``resolve_backend``)."""
    if resolve_backend(backend) == "cupy":
        import cupy

        return cupy
    return np


def asarray(a, backend: str | None = None, dtype=None):
    """Put ``a`` on the given backend (a host-to-device copy for cupy), optionally casting."""
    return xp_for(backend).asarray(a, dtype=dtype)


def to_numpy(a):
    """Return ``a`` as a NumPy array (a device-to-host copy for CuPy; NumPy arrays pass through)."""
    if _is_cupy_array(a):
        return a.get()
    return np.asarray(a)


def synchronize(*arrays) -> None:
    """Wait until the device has finished all queued work (a no-op for NumPy).

    Needed before reading a wall clock around GPU work. With no arguments, synchronizes the current
    CuPy device if CuPy is usable.
    """
    if arrays and get_xp(*arrays) is np:
        return
    if not arrays and not cupy_usable():
        return
    import cupy

    cupy.cuda.get_current_stream().synchronize()


def scatter_add(target, indices, values) -> None:
    """``target[indices] += values`` with repeated indices accumulated (in place, on ``target``).

    NumPy's fancy ``+=`` keeps only the last write for a repeated index (``np.add.at`` accumulates, one
    element at a time); here the runs of equal indices are summed first (``_run_sums``). CuPy spells it
    ``cupyx.scatter_add``. ``indices`` index the first axis of ``target``.
    """
    if get_xp(target) is np:
        for rows, sums in _run_sums(np.asarray(indices).reshape(-1), values):
            target[rows] += sums  # distinct rows: plain fancy += is exact
    else:
        import cupyx

        cupyx.scatter_add(target, indices, values)


def _run_sums(indices, values):
    """``(rows, sums)`` pairs that cover every distinct index once: sort the indices, sum each run of equal
    ones. ``np.add.at`` does the same one element at a time (about 10 ns each); this moves whole rows, 4-8x
    faster. Runs of one index (most of them for a large vocabulary) are gathered directly; only longer runs
    go through ``np.add.reduceat``, whose cost is per run. Each index's values are summed in their original
    order (a stable sort): deterministic."""
    if indices.size == 0:
        return []
    order = np.argsort(indices, kind="stable")  # (N,)
    ids = indices[order]  # (N,) sorted
    first = np.empty(ids.shape, dtype=bool)  # (N,) True where a run of equal ids starts
    first[0] = True
    np.not_equal(ids[1:], ids[:-1], out=first[1:])
    starts = np.flatnonzero(first)  # (U,)
    lengths = np.diff(starts, append=ids.size)  # (U,)
    single = lengths == 1  # (U,)
    out = []
    if single.any():
        out.append((ids[starts[single]], values[order[starts[single]]]))
    if not single.all():
        runs = ~single
        rows = order[np.repeat(runs, lengths)]  # (M,) the values of the longer runs, run by run
        run_starts = np.cumsum(lengths[runs]) - lengths[runs]  # (R,)
        out.append((ids[starts[runs]], np.add.reduceat(values[rows], run_starts, axis=0)))
    return out


def erf(x):
    """Elementwise error function, dtype preserved.

    NumPy has no erf: we use SciPy's when it is installed, otherwise the standard library's
    ``math.erf`` element by element (exact, slower). CuPy has its own.
    """
    xp = get_xp(x)
    if xp is not np:
        import cupyx.scipy.special

        return cupyx.scipy.special.erf(x)
    try:
        from scipy.special import erf as _erf
    except ImportError:  # pragma: no cover - depends on the environment
        _erf = np.frompyfunc(math.erf, 1, 1)
    return np.asarray(_erf(x), dtype=x.dtype)


@functools.lru_cache(maxsize=1)
def tune_host_allocator() -> bool:
    """Keep freed large blocks in glibc's heap instead of returning them to the OS.

    NumPy allocates a fresh array for almost every expression; at the sizes of a training step (100 KB
    to 10 MB) glibc serves each with mmap and unmaps it on free, so every temporary costs page faults
    (measured: about a quarter of a CPU training step). Raising the mmap and trim thresholds makes freed
    blocks reusable. Applied once per process, on glibc only; ``SCRATCHLLM_MALLOC_TUNE=0`` turns it off.
    Returns whether it was applied.
    """
    if os.environ.get("SCRATCHLLM_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers from <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False


def free_memory(xp=np):
    """Free bytes where ``xp``'s arrays live: the GPU's (CuPy), else the host's available memory; None unknown."""
    try:
        if xp is not np:
            return int(xp.cuda.runtime.memGetInfo()[0])
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def device_info() -> dict:
    """A small dict describing the GPU (empty when none is usable)."""
    if not cupy_usable():
        return {}
    import cupy

    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    free, total = cupy.cuda.runtime.memGetInfo()
    return {
        "name": name,
        "id": dev.id,
        "compute_capability": dev.compute_capability,
        "memory_total_gib": round(total / 2**30, 2),
        "memory_free_gib": round(free / 2**30, 2),
        "pci_bus_id": getattr(dev, "pci_bus_id", None),
        "multiprocessors": props.get("multiProcessorCount"),
        "max_clock_mhz": props["clockRate"] / 1e3 if props.get("clockRate") else None,  # kHz in the properties
        "memory_clock_mhz": props["memoryClockRate"] / 1e3 if props.get("memoryClockRate") else None,
        "l2_mb": props["l2CacheSize"] / 2**20 if props.get("l2CacheSize") else None,
        "cupy": cupy.__version__,
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
        "tf32": os.environ.get("CUPY_TF32", "0") == "1",  # CuPy's float32 matmuls in TF32 (off unless set)
    }
