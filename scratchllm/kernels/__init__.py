"""Optional fused CUDA kernels for the hot ops, through CuPy. Each has its xp op in ``scratchllm/ops/`` (or
the update rule in ``scratchllm/optim.py``) as its reference, with the same signature, return values and
cache layout, so a kernel forward's cache also works with the xp backward and the other way round.

Dispatch: each op checks, at the top of its forward and backward, ``xp is not np and kernels.enabled()``
and then calls the kernel here. ``enabled()`` is True when CuPy imports AND a GPU really computes AND the
environment variable ``SCRATCHLLM_KERNELS`` is not ``"0"`` (set it to 0 to compare with the plain CuPy ops).

The same switch turns off the fused CPU kernels (``scratchllm/kernels/cpu/``, compiled by Numba when it is
installed), which the ops dispatch NumPy arrays to when ``cpu_enabled()``.

Importing this package does not import cupy: the families (``layernorm``, ``softmax``, ``gelu``,
``cross_entropy``, ``optim``) are loaded on first use, and their CUDA sources are plain module-level strings
that the tests compile with nvcc on a machine without a GPU. Float32 and float64 are both compiled (C++
templates, or the ElementwiseKernel type placeholder). docs/gpu.md describes every kernel.
"""

from __future__ import annotations

import functools
import importlib
import os

import numpy as np

from ..backend import cupy_status

ENV_VAR = "SCRATCHLLM_KERNELS"
FAMILIES = ("layernorm", "softmax", "gelu", "cross_entropy", "optim")

# public name -> the family module that defines it
_EXPORTS = {
    "layernorm_forward": "layernorm", "layernorm_backward": "layernorm",
    "softmax_forward": "softmax", "softmax_backward": "softmax",
    "scaled_causal_softmax_forward": "softmax",
    "gelu_forward": "gelu", "gelu_backward": "gelu",
    "cross_entropy_forward": "cross_entropy", "cross_entropy_backward": "cross_entropy",
    "adam_step": "optim", "adagrad_step": "optim",
}

__all__ = ["ENV_VAR", "FAMILIES", "enabled", "status", "cpu_enabled", "cpu_kernel_for", "cpu_status", *_EXPORTS]


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


def cpu_status() -> tuple[bool, str]:
    """``(enabled, reason)``: whether the ops dispatch NumPy arrays to the fused CPU kernels, and why (not)."""
    if os.environ.get(ENV_VAR, "1").strip() == "0":
        return False, f"{ENV_VAR}=0 turns the fused kernels off"
    reason = _numba_reason()
    if reason is not None:
        return False, f"no fused CPU kernels: {reason}"
    from ..threads import cpu_threads
    from .cpu import PRANGE_MIN, _tbb_layer

    if cpu_threads() < 2:
        where = "on one thread"
    elif _tbb_layer():
        where = f"on {cpu_threads()} threads from {PRANGE_MIN // 1024}K elements (Numba's TBB layer)"
    else:
        where = "on the Python threads (Numba's TBB layer not in use)"
    return True, f"fused CPU kernels (Numba) on ({ENV_VAR}=0 turns them off), {where}"


def cpu_enabled() -> bool:
    """True when NumPy arrays go to the fused CPU kernels (Numba imports, ``SCRATCHLLM_KERNELS`` != 0)."""
    return os.environ.get(ENV_VAR, "1").strip() != "0" and _numba_reason() is None


_CPU_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # what the CPU kernels are compiled for


def cpu_kernel_for(*arrays) -> bool:
    """True when these NumPy arrays go to the fused CPU kernels: ``cpu_enabled()``, and each is a plain
    ``ndarray`` of float32 or float64 in native byte order (float16, byte-swapped and subclassed arrays
    take the NumPy code, which handles them)."""
    return all(type(a) is np.ndarray and a.dtype in _CPU_DTYPES for a in arrays) and cpu_enabled()


def __getattr__(name):  # PEP 562: load a family (and so cupy) only when one of its kernels is first used
    family = _EXPORTS.get(name)
    if family is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{family}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value
