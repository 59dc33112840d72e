"""The registry of fast implementations: for each op, the ways to compute the textbook's numbers faster.

An implementation has its op's exact signature, return values and cache layout (a cache from any of them
works with the textbook backward and the other way round), lives in a module of its own under
``kernels/numpy/``, ``kernels/cpu/`` or ``kernels/cuda``-style family modules, and says which inputs it takes
(``supports``: backend, dtype, size, layout). ``IMPLEMENTATIONS`` below lists every one, in the order they
are preferred; ``select`` names the first that supports the inputs, "reference" (the textbook in
``scratchllm/ops/``) when none does or ``SCRATCHLLM_KERNELS=0``. ``scratchllm.kernels.dispatch`` runs the
selected one; ``tests/kernels/test_registry.py`` proves every one equal to its reference.

Modules load on first use, so listing the registry imports neither Numba nor CuPy.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..backend import get_xp
from .cpu import fused_rows
from .status import cpu_kernel_for, enabled, switched_on

REFERENCE = "reference"


@dataclass(frozen=True)
class Implementation:
    """One fast way to run an op. ``forward`` and ``backward`` are ``<op>_forward`` and ``<op>_backward`` of
    ``module`` (imported on first use); ``supports(*inputs, **options)`` says whether it takes a forward's
    inputs, ``supports_backward(dout, cache)`` a backward's (an implementation of one direction only says
    False for the other)."""

    op: str
    name: str
    module: str
    supports: Callable
    supports_backward: Callable
    doc: str = ""
    needs: str = ""  # "cuda" or "numba" when it runs only with that (tests expect the others to run here)

    @property
    def forward(self) -> Callable:
        return getattr(_loaded(self.module), f"{self.op}_forward")

    @property
    def backward(self) -> Callable:
        return getattr(_loaded(self.module), f"{self.op}_backward")


_LOADED: dict = {}


def _loaded(module: str):
    """The module, imported on first use (a dict look-up afterwards: the dispatch asks at every call). Only a
    module whose import has finished is remembered: batch shards in threads may ask for one at once, and
    ``sys.modules`` holds a module while another thread is still running its code (``import_module`` waits)."""
    found = _LOADED.get(module)
    if found is None:
        found = _LOADED[module] = importlib.import_module(module)
    return found


# ----------------------------------------------------------------------------------------- eligibility
def _numpy(*arrays) -> bool:
    """Plain NumPy arrays, not empty: what the NumPy rewrites take."""
    return all(type(a) is np.ndarray for a in arrays) and arrays[0].size > 0


def _numba(*arrays) -> bool:
    """What the Numba kernels take: plain float32/float64 NumPy arrays in native byte order, Numba importable."""
    return cpu_kernel_for(*arrays) and arrays[0].size > 0


def _heads(q, k) -> bool:
    """As many key/value heads as query heads: grouped-query attention (fewer) runs the textbook."""
    return q.shape[1] == k.shape[1]


def _cuda(*arrays) -> bool:
    """CuPy arrays, not empty, with the fused CUDA kernels usable (a GPU that computes)."""
    return type(arrays[0]) is not np.ndarray and get_xp(*arrays) is not np and arrays[0].size > 0 and enabled()


def _last(a, axis) -> bool:
    return axis % a.ndim == a.ndim - 1


IMPLEMENTATIONS = [
    Implementation("layernorm", "cuda", "scratchllm.kernels.cuda.layernorm",
                   lambda x, w, b, eps=1e-5: _cuda(x, w, b), lambda dout, cache: _cuda(cache[0], dout),
                   "one CUDA block of warps per row; dw, db in column blocks", needs="cuda"),
    Implementation("layernorm", "numba", "scratchllm.kernels.cpu.layernorm",
                   lambda x, w, b, eps=1e-5: _numba(x, w, b), lambda dout, cache: _numba(cache[0], cache[2]),
                   "one loop per row, rows on every core (prange)", needs="numba"),
    Implementation("layernorm", "numpy", "scratchllm.kernels.numpy.layernorm",
                   lambda x, w, b, eps=1e-5: _numpy(x, w, b), lambda dout, cache: _numpy(cache[0], dout),
                   "NumPy in place, sums as matrix products, pieces of rows on every thread"),
    Implementation("softmax", "cuda", "scratchllm.kernels.cuda.softmax",
                   lambda x, axis=-1: _cuda(x), lambda dout, cache: _cuda(cache[0], dout),
                   "one CUDA warp per slice along the axis", needs="cuda"),
    Implementation("softmax", "numba", "scratchllm.kernels.cpu.softmax",
                   lambda x, axis=-1: _last(x, axis) and fused_rows(x),
                   lambda dout, cache: _last(*cache) and fused_rows(cache[0]) and cpu_kernel_for(dout),
                   "three sweeps per row of the last axis (C-contiguous), rows on every core (prange)",
                   needs="numba"),
    Implementation("softmax", "numpy", "scratchllm.kernels.numpy.softmax",
                   lambda x, axis=-1: _numpy(x), lambda dout, cache: _numpy(cache[0], dout),
                   "NumPy in place, sums as matrix products, pieces along another axis on every thread"),
    Implementation("cross_entropy", "cuda", "scratchllm.kernels.cuda.cross_entropy",
                   lambda logits, targets, ignore_index=-1: _cuda(logits), lambda dout, cache: _cuda(cache[0]),
                   "log-sum-exp and the loss in one pass per row; the backward's softmax recomputed", needs="cuda"),
    Implementation("cross_entropy", "numba", "scratchllm.kernels.cpu.cross_entropy",
                   lambda logits, targets, ignore_index=-1: fused_rows(logits),
                   lambda dout, cache: fused_rows(cache[0]) and fused_rows(cache[1]),
                   "the log-sum-exp and the weighted softmax in one loop per row, rows on every core", needs="numba"),
    Implementation("cross_entropy", "numpy", "scratchllm.kernels.numpy.cross_entropy",
                   lambda logits, targets, ignore_index=-1: _numpy(logits),
                   lambda dout, cache: _numpy(cache[0]),
                   "NumPy in place, sums as matrix products, pieces of rows on every thread"),
    Implementation("embedding", "numba", "scratchllm.kernels.cpu.embedding",
                   lambda idx, table: False,  # the backward only: the gather is NumPy's
                   lambda dout, cache: cpu_kernel_for(dout) and dout.dtype == cache[2] and dout.size > 0,
                   "the backward's scatter-add in one loop over the tokens, columns dealt to the threads",
                   needs="numba"),
    Implementation("embedding", "numpy", "scratchllm.kernels.numpy.embedding",
                   lambda idx, table: _numpy(idx, table), lambda dout, cache: _numpy(dout),
                   "the gather in pieces on every thread; the zeroed table by memset on every core"),
    Implementation("linear", "blas", "scratchllm.kernels.numpy.linear",
                   lambda x, w, b=None: x.size > 0, lambda dout, cache: dout.size > 0,  # NumPy or CuPy
                   "one GEMM over all rows (MKL's sequential GEMM in a single-core shard), bias in place, "
                   "dw into a given array"),
    Implementation("attention", "cuda", "scratchllm.kernels.cuda.attention",
                   lambda q, k, v, causal=True, dropout=0.0, rng=None: _cuda(q, k, v) and _heads(q, k),
                   lambda dout, cache: _cuda(cache[0], dout) and _heads(*cache[:2]),
                   "whole arrays; scale, causal mask and softmax in one CUDA pass", needs="cuda"),
    Implementation("attention", "numpy", "scratchllm.kernels.numpy.attention",
                   lambda q, k, v, causal=True, dropout=0.0, rng=None: _numpy(q, k, v) and _heads(q, k),
                   lambda dout, cache: _numpy(cache[0], dout) and _heads(*cache[:2]),
                   "the (batch, head) matrices in pieces on every thread, MKL's GEMM, the scale-mask-softmax "
                   "fused per row where Numba is installed"),
    Implementation("attention_blocked", "cuda", "scratchllm.kernels.cuda.attention",
                   lambda q, k, v, dropout=0.0, rng=None, block=64: _cuda(q, k, v) and _heads(q, k),
                   lambda dout, cache: _cuda(cache[0], dout) and _heads(*cache[:2]),
                   "each block's scale, mask and softmax in one CUDA pass", needs="cuda"),
    Implementation("attention_blocked", "numpy", "scratchllm.kernels.numpy.attention_blocked",
                   lambda q, k, v, dropout=0.0, rng=None, block=64: _numpy(q, k, v) and _heads(q, k),
                   lambda dout, cache: _numpy(cache[0], dout) and _heads(*cache[:2]),
                   "each block as the attention's pieces; inputs read and outputs written in GPT's layouts"),
    Implementation("flash_attention", "cuda", "scratchllm.kernels.cuda.flash_attention",
                   lambda q, k, v, causal=True, block_q=64, block_k=64: _cuda(q, k, v) and _heads(q, k)
                   and q.shape[-1] <= 128,
                   lambda dout, cache: _cuda(cache[0], dout) and _heads(*cache[:2]) and cache[0].shape[-1] <= 128,
                   "a CUDA block per tile of 64 rows, a thread per row, the other side in shared-memory tiles; "
                   "D <= 128", needs="cuda"),
    Implementation("flash_attention", "numpy", "scratchllm.kernels.numpy.flash_attention",
                   lambda q, k, v, causal=True, block_q=64, block_k=64: _numpy(q, k, v) and _heads(q, k),
                   lambda dout, cache: _numpy(cache[0], dout) and _heads(*cache[:2]),
                   "the (batch, head) pairs dealt to the threads, tiles of >= 128 through MKL's GEMM, in place"),
    Implementation("gelu", "cuda", "scratchllm.kernels.cuda.gelu",
                   lambda x, approximate="tanh": _cuda(x), lambda dout, cache: _cuda(cache[0], dout),
                   "one CUDA elementwise pass", needs="cuda"),
    Implementation("gelu", "numba", "scratchllm.kernels.cpu.gelu",
                   lambda x, approximate="tanh": _numba(x), lambda dout, cache: _numba(cache[0], cache[1]),
                   "one loop over the elements, pieces on every core (prange)", needs="numba"),
    Implementation("gelu", "numpy", "scratchllm.kernels.numpy.gelu",
                   lambda x, approximate="tanh": _numpy(x), lambda dout, cache: _numpy(cache[0], dout),
                   "NumPy in place, pieces on every thread; float32 erf by a rational approximation"),
]

_BY_OP: dict = {}
for _impl in IMPLEMENTATIONS:
    _BY_OP.setdefault(_impl.op, []).append(_impl)


def implementations(op: str) -> dict:
    """``{name: Implementation}`` for ``op``, in the order of preference (empty for an op with none)."""
    return {impl.name: impl for impl in _BY_OP.get(op, ())}


def pick(op: str, *inputs, **options):
    """The first implementation that supports these forward inputs, or None for the textbook."""
    if switched_on():
        for impl in _BY_OP.get(op, ()):
            if impl.supports(*inputs, **options):
                return impl
    return None


def pick_backward(op: str, dout, cache):
    """The first implementation that supports this backward's dout and cache, or None for the textbook."""
    if switched_on():
        for impl in _BY_OP.get(op, ()):
            if impl.supports_backward(dout, cache):
                return impl
    return None


def select(op: str, *inputs, **options) -> str:
    """The name of what runs ``op``'s forward for these inputs: an implementation's, or "reference"."""
    impl = pick(op, *inputs, **options)
    return REFERENCE if impl is None else impl.name
