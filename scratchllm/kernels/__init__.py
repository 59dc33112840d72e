"""Fast implementations of the ops, each registered for its op with the rule of which inputs it takes
(``registry.py``: ``implementations(op)``, ``select(op, *inputs)``), run by ``dispatch.py`` under the textbook's
names; docs/architecture.md. Every one has its op in ``scratchllm/ops/`` as its reference, with the same
signature, return values and cache layout, so a fast forward's cache also works with the textbook backward and
the other way round (``tests/kernels/test_registry.py``).

Where they live: ``numpy/`` (NumPy rewrites), ``cpu/`` (Numba kernels and the compiled MKL caller), and the CUDA
families below (through CuPy). ``SCRATCHLLM_KERNELS=0`` turns every one off; ``status()``/``cpu_status()`` say
whether the CUDA and CPU kernels can run here, and why (not).

The names ``layernorm_forward``, ``softmax_forward``, ... of this package are the raw CUDA kernels (the
families ``layernorm``, ``softmax``, ``gelu``, ``cross_entropy``, ``optim``), loaded on first use: importing
this package does not import cupy, and their CUDA sources are plain module-level strings that the tests compile
with nvcc on a machine without a GPU. The dispatched ops are ``scratchllm.kernels.dispatch.layernorm_forward``
etc. docs/gpu.md describes every CUDA kernel.
"""

from __future__ import annotations

import importlib

from .cpu import cpu_status
from .registry import REFERENCE, Implementation, implementations, select
from .status import (ENV_VAR, _numba_reason, cpu_enabled, cpu_kernel_for, enabled, status,  # noqa: F401
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
    value = getattr(importlib.import_module(f"{__name__}.cuda.{family}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value
