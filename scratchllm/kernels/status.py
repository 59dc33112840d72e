"""Whether the fast implementations can run here, and why (not): CUDA kernels need CuPy and a GPU that
computes, CPU kernels need Numba; ``SCRATCHLLM_KERNELS=0`` turns all of them off."""

from __future__ import annotations

import functools
import os

import numpy as np

from ..backend import cupy_status

ENV_VAR = "SCRATCHLLM_KERNELS"


def switched_on() -> bool:
    """False when ``SCRATCHLLM_KERNELS=0``: then the textbook ops run everywhere."""
    return os.environ.get(ENV_VAR, "1").strip() != "0"


def status() -> tuple[bool, str]:
    """``(enabled, reason)``: whether the ops dispatch CuPy arrays to the fused kernels, and why (not)."""
    if os.environ.get(ENV_VAR, "1").strip() == "0":
        return False, f"{ENV_VAR}=0 turns the fused kernels off"
    usable, reason = cupy_status()
    if not usable:
        return False, f"no fused kernels: {reason}"
    return True, f"fused CUDA kernels on ({ENV_VAR}=0 turns them off)"


def enabled() -> bool:
    """True when CuPy arrays go to the fused kernels (CuPy and a GPU usable, ``SCRATCHLLM_KERNELS`` != 0)."""
    return status()[0]


@functools.lru_cache(maxsize=1)
def _numba_reason():
    """None when Numba imports, else why not (looked up once: the import takes a few hundred ms)."""
    try:
        import numba  # noqa: F401
    except Exception as exc:  # ImportError, or a Numba that rejects this NumPy
        return f"numba does not import ({type(exc).__name__}: {exc}); pip install scratchllm[fast]"
    return None


def cpu_enabled() -> bool:
    """True when NumPy arrays go to the fused CPU kernels (Numba imports, ``SCRATCHLLM_KERNELS`` != 0)."""
    return os.environ.get(ENV_VAR, "1").strip() != "0" and _numba_reason() is None


_CPU_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # what the CPU kernels are compiled for


def cpu_kernel_for(*arrays) -> bool:
    """True when these NumPy arrays go to the fused CPU kernels: ``cpu_enabled()``, and each is a plain
    ``ndarray`` of float32 or float64 in native byte order (float16, byte-swapped and subclassed arrays
    take the NumPy code, which handles them)."""
    return all(type(a) is np.ndarray and a.dtype in _CPU_DTYPES for a in arrays) and cpu_enabled()
