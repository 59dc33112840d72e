"""How the CPU kernels are compiled: ``jit`` (Numba's ``njit`` with the kernels' options, the machine code
cached on disk in ``CACHE_DIR``), the constants the kernels share, and the one-time notice of a first compile.
Importing this module does not import Numba."""

from __future__ import annotations

import hashlib
import os
import sys
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
    sources = sorted(HERE.glob("*.py"))  # gemm.py compiles gemm_layout.py's checks: both are here
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    base = HERE / "__pycache__" if os.access(HERE, os.W_OK) else Path.home() / ".cache" / "scratchllm"
    return str(base / f"numba-{digest}")


CACHE_DIR = _cache_dir()


_ANNOUNCED = []


def announce_first_compile() -> None:
    """Say once on stderr that the kernels compile now, when their disk cache does not exist yet (a fresh
    install, or an edit of these files): a first training step otherwise pauses for seconds, silently."""
    if not _ANNOUNCED:
        _ANNOUNCED.append(not os.path.isdir(CACHE_DIR))
        if _ANNOUNCED[0]:
            print(f"scratchllm: compiling the CPU kernels (first run only, about a second per kernel; cached in "
                  f"{CACHE_DIR})", file=sys.stderr)


def jit(signatures=None, **options):
    """``numba.njit`` with the kernels' ``OPTIONS`` (plus ``options``, e.g. fastmath), its machine code cached
    on disk in ``CACHE_DIR`` (Numba reads its cache setting when a function is decorated). ``signatures``:
    compile these at once and only these (arrays of any layout then share one compiled function)."""
    import numba

    announce_first_compile()

    def decorate(fn):
        saved = numba.config.CACHE_DIR
        numba.config.CACHE_DIR = CACHE_DIR
        try:
            if signatures is not None:
                return numba.njit(signatures, cache=True, **OPTIONS, **options)(fn)
            return numba.njit(cache=True, **OPTIONS, **options)(fn)
        finally:
            numba.config.CACHE_DIR = saved

    return decorate
