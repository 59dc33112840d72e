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

import importlib

from .registry import REFERENCE, Implementation, implementations, select
from .status import (ENV_VAR, _numba_reason, cpu_enabled, cpu_kernel_for, cpu_status, enabled, status,  # noqa: F401
                     switched_on)

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

__all__ = ["ENV_VAR", "FAMILIES", "enabled", "status", "cpu_enabled", "cpu_kernel_for", "cpu_status",
           "implementations", "select", "Implementation", "REFERENCE", "switched_on", *_EXPORTS]


def __getattr__(name):  # PEP 562: load a family (and so cupy) only when one of its kernels is first used
    family = _EXPORTS.get(name)
    if family is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{family}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value
