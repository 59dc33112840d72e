"""Optional fused CPU kernels for the hot ops, compiled by Numba (``pip install scratchllm[fast]``).

They are to the NumPy ops what the CUDA kernels in ``scratchllm/kernels/`` are to the CuPy ones: each
family has its op in ``scratchllm/ops/`` as its reference, with the same signature, return values and
cache layout (a kernel forward's cache works with the NumPy backward and the other way round), and
``tests/kernels/test_cpu_kernels.py`` proves the two equal. Where NumPy makes one pass over memory per
arithmetic step (an op is 5 to 18 passes), a kernel runs one loop per row or element: layernorm, softmax
(and attention's scaled causal softmax, and the cross-entropy's two row loops), GELU, the embedding
backward's scatter-add, and the Adam/AdamW/Adagrad update (bit-identical to the NumPy update).

Dispatch: each op checks ``kernels.cpu_kernel_for(*arrays)`` at the top of its forward and backward. That is
True for plain float32/float64 NumPy arrays when Numba imports and ``SCRATCHLLM_KERNELS`` is not ``"0"`` (set
it to 0 to run the NumPy code). Importing this package does not import Numba; the families load on first
use and compile on their first call for each dtype and layout (about a second each), and the machine code is
kept on disk for the next process (``CACHE_DIR``).

Float32 arithmetic stays float32 and float64 stays float64: the kernels write their constants as
float32 only where float32 is exact (0, 1/2, 1) and otherwise through ``_math.cast``; accumulators start
at a float32 zero and take the array's type. ``REDUCE`` lets LLVM reorder the sums of a row into vector
lanes (like NumPy's pairwise sums, not the same order as a sequential loop).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

ZERO, ONE = np.float32(0.0), np.float32(1.0)
REDUCE = {"reassoc", "contract"}  # fastmath flags: vectorized sums and fused multiply-adds
# Numba options of every kernel: NumPy's error model (x / 0 gives inf, as in NumPy; Python's model would
# check every division for ZeroDivisionError, and that branch keeps LLVM from vectorizing the loop), and no
# GIL (the ops run kernels on every core in threads)
OPTIONS = {"error_model": "numpy", "nogil": True}
HERE = Path(__file__).parent


def _cache_dir() -> str:
    """Where the kernels' machine code is cached: a folder named after a hash of every file in this package.

    Numba keys a function's disk cache on that function's own source file only, not on the ``_math.py``
    functions it inlines or the flags above; keyed on all of them, an edit anywhere here recompiles every
    kernel instead of loading stale code. Next to the sources when that is writable, else in ~/.cache."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(HERE.glob("*.py")))).hexdigest()[:16]
    base = HERE / "__pycache__" if os.access(HERE, os.W_OK) else Path.home() / ".cache" / "scratchllm"
    return str(base / f"numba-{digest}")


CACHE_DIR = _cache_dir()


def jit(**options):
    """``numba.njit`` with the kernels' ``OPTIONS`` (plus ``options``, e.g. fastmath), its machine code cached
    on disk in ``CACHE_DIR`` (Numba reads its cache setting when a function is decorated)."""
    import numba

    def decorate(fn):
        saved = numba.config.CACHE_DIR
        numba.config.CACHE_DIR = CACHE_DIR
        try:
            return numba.njit(cache=True, **OPTIONS, **options)(fn)
        finally:
            numba.config.CACHE_DIR = saved

    return decorate
