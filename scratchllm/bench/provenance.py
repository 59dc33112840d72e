"""What a bench result records about where it ran (``env`` in the JSON): the commit with a dirty flag, the CPU's
model, count, clock, governor and caches, other load, every thread pool's setting, the libraries' versions, and on
a GPU its name, driver, clocks (``nvidia-smi`` where it is installed) and the TF32 settings of CuPy and torch."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone

import numpy as np

from .. import kernels
from ..backend import cupy_status, device_info
from ..kernels import cpu_status
from ..kernels.blas import status as shard_gemm_status
from ..kernels.threads import cpu_threads
from .load import background_busy

THREAD_VARS = ("SCRATCHLLM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS")  # what --threads sets (set_threads)


def _git(*args):
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        p = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        return p.stdout.strip() if p.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_commit():
    """The commit, with ``-dirty`` when tracked files differ from it (the numbers are not that commit's)."""
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    return commit or None


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_clock():
    """The CPU's frequency governor and current MHz, where the system lets us read them (a VM often does not)."""
    mhz = None
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("cpu MHz"):
            mhz = float(line.split(":", 1)[1])
            break
    return {"governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"), "mhz": mhz,
            "l2_kb": _cache_kb("l2"), "llc_kb": _cache_kb()}


def _cache_kb(which="llc"):
    """The size in KB of the L2 (``which="l2"``) or the last-level cache (sysfs), or None."""
    sizes = {}
    for i in range(8):
        level, size = (_read(f"/sys/devices/system/cpu/cpu0/cache/index{i}/{k}") for k in ("level", "size"))
        if level and size and size.endswith("K"):
            sizes[int(level)] = int(size[:-1])
    if not sizes:
        return None
    return sizes.get(2) if which == "l2" else sizes[max(sizes)]


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas_threads():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return {p.get("internal_api"): p.get("num_threads") for p in threadpool_info()}


def environment(torch=None) -> dict:
    """What a reader needs to reproduce or compare a run: machine, versions, BLAS, threads, GPU, commit."""
    from .. import __version__

    try:
        blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        blas = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: show_config has no mode
        blas = None
    try:
        import scipy
        scipy_version = scipy.__version__
    except ImportError:
        scipy_version = None
    usable, reason = cupy_status()
    env = {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(), "scratchllm": __version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "cpu_clock": cpu_clock(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "background_cpu_busy_pct": background_busy(),
        "numpy": np.__version__, "blas": blas, "blas_threads": _blas_threads(), "scipy": scipy_version,
        "scratchllm_threads": cpu_threads(),  # batch shards and op pieces at once (threads.py)
        "cpu_kernels": cpu_status()[1],  # the fused Numba kernels (kernels/cpu/), or why not
        "shard_gemm": shard_gemm_status()[1],  # MKL's GEMM in single-core shards (blas.py), or why not
        "thread_env": {v: os.environ[v] for v in (*THREAD_VARS, "SCRATCHLLM_KERNELS",
                                                  "SCRATCHLLM_MKL") if v in os.environ},
        "torch": torch.__version__ if torch else None,
        "torch_threads": torch.get_num_threads() if torch else None,
        "torch_cuda": bool(torch.cuda.is_available()) if torch else False,
        "tf32": tf32(torch),
        "cupy_usable": usable, "cupy_reason": reason,
        "gpu": _gpu(),
    }
    return env


def _gpu() -> dict:
    if not cupy_status()[0]:
        return {}
    info = device_info()
    return {**info, "fused_kernels": kernels.enabled(), "nvidia_smi": nvidia_smi(info.get("pci_bus_id"))}


def tf32(torch=None) -> dict:
    """Whether float32 matmuls may run in TF32 (10-bit mantissa) on a GPU: CuPy only with ``CUPY_TF32=1``;
    torch per its matmul and cuDNN switches and ``float32_matmul_precision`` ("highest" is IEEE float32)."""
    out = {"cupy": os.environ.get("CUPY_TF32", "0") == "1", "CUPY_TF32": os.environ.get("CUPY_TF32")}
    if torch is not None:
        out.update(torch_matmul=bool(torch.backends.cuda.matmul.allow_tf32),
                   torch_cudnn=bool(torch.backends.cudnn.allow_tf32),
                   torch_float32_matmul_precision=torch.get_float32_matmul_precision())
    return out


SMI_FIELDS = ("name", "driver_version", "pstate", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem",
              "clocks.applications.graphics", "persistence_mode", "power.limit", "temperature.gpu",
              "clocks_event_reasons.active")
SMI_OLD_NAMES = {"clocks_event_reasons.active": "clocks_throttle_reasons.active"}  # drivers before 535


def nvidia_smi(pci_bus_id=None, run=subprocess.run) -> dict:
    """The GPU's driver, clocks (MHz: now, the maximum, the application clock), performance state, power limit,
    temperature and active clock-event (throttle) reasons, from ``nvidia-smi --query-gpu``, for the GPU at
    ``pci_bus_id`` (CuPy's device; nvidia-smi numbers GPUs its own way); {} where nvidia-smi is missing. A field
    this driver does not know is asked for by its older name, or left out (one unknown field fails the query)."""
    def query(fields):
        cmd = ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
        if pci_bus_id:
            cmd.append(f"--id={pci_bus_id}")
        done = run(cmd, capture_output=True, text=True, timeout=20)
        if done.returncode != 0 or not done.stdout.strip():
            return None
        values = [v.strip() for v in done.stdout.strip().splitlines()[0].split(",")]
        return values if len(values) == len(fields) else None

    try:
        values = query(SMI_FIELDS)
        if values is None:  # one at a time
            values = [(query([f]) or (query([SMI_OLD_NAMES[f]]) if f in SMI_OLD_NAMES else None) or [""])[0]
                      for f in SMI_FIELDS]
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k: v for k, v in zip(SMI_FIELDS, values) if v and v not in ("[N/A]", "[Not Supported]")}
