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

Threads: from ``PRANGE_MIN`` elements a kernel runs on every core through Numba's ``prange`` (the ``*_par``
driver next to it, over pieces whose size depends on the work alone), but only under Numba's TBB threading
layer (``tbb`` comes with the ``mkl`` of the ``fast`` extra), where starting a parallel loop takes about 2 us;
without TBB, and inside a batch shard, the pieces go through ``threads.parallel_chunks`` as before.

Float32 arithmetic stays float32 and float64 stays float64: the kernels write their constants as
float32 only where float32 is exact (0, 1/2, 1) and otherwise through ``_math.cast``; accumulators start
at a float32 zero and take the array's type. ``REDUCE`` lets LLVM reorder the sums of a row into vector
lanes (like NumPy's pairwise sums, not the same order as a sequential loop).
"""

from __future__ import annotations

import os

import numpy as np

from .. import threads
from ..status import ENV_VAR, _numba_reason, cpu_kernel_for
from .compile import CACHE_DIR, ONE, OPTIONS, REDUCE, ZERO, announce_first_compile, jit  # noqa: F401 (kernels' names)

# Kernels on every core through Numba's ``prange`` (the ``*_par`` drivers next to each kernel), from PRANGE_MIN
# elements, in pieces of about PRANGE_PIECE (sizes fixed by the work, not the thread count, so sums over
# pieces do not depend on it). Only under Numba's TBB threading layer, whose workers wait spinning between
# loops: a launch takes about 2 us on the CI machine against 74 us for handing a piece to a Python thread
# (``threads.parallel_map``) and 118 us under Numba's own ``workqueue`` layer. Never inside a batch shard,
# which has its core (``threads.in_line_active``).
PRANGE_MIN = 1 << 15
PRANGE_PIECE = 1 << 14


def prange_rows(n: int, size: int) -> int:
    """Rows per piece for a kernel's ``*_par`` driver over ``n`` rows (``size`` elements in all), after setting
    Numba's thread count; 0 when the kernel should not use it (then ``threads.parallel_chunks`` runs it)."""
    if size < PRANGE_MIN or threads.in_line_active():
        return 0
    import numba

    count = min(threads.cpu_threads(), numba.config.NUMBA_NUM_THREADS)  # Numba's own limit counts too
    if count < 2 or not _tbb_layer():
        return 0
    numba.set_num_threads(count)
    return max(1, PRANGE_PIECE * n // size)


def run_rows(serial, par, arrays, extra, size):
    """``serial(*[a[r] for a in arrays], *extra)`` over every row range r of the arrays (rows on axis 0):
    through ``par(*arrays, *extra, rows)`` (its ``prange`` driver) where ``prange_rows`` says so, else in
    ``threads.parallel_chunks`` pieces. ``size``: the elements the work touches."""
    n = arrays[0].shape[0]
    rows = prange_rows(n, size)
    if rows:
        par(*arrays, *extra, rows)
    elif size <= threads.KERNEL_PIECE:  # one piece: parallel_chunks would make this very call (5 us sooner)
        serial(*arrays, *extra)
    else:
        threads.parallel_chunks(lambda r: serial(*(a[r] for a in arrays), *extra), n, size, np, fused=True)


_TBB = []


def _tbb_layer() -> bool:
    """Whether Numba's parallel loops run on its TBB layer (decided at the first parallel launch: one tiny
    loop is run to find out; Numba tries TBB first unless ``NUMBA_THREADING_LAYER`` says otherwise)."""
    if not _TBB:
        import numba

        from ._prange import probe

        try:
            probe(np.zeros(2))
            _TBB.append(numba.threading_layer() == "tbb")
        except Exception:  # noqa: BLE001 (no usable threading layer at all: the Python threads run the pieces)
            _TBB.append(False)
    return _TBB[0]


def fused_rows(*arrays) -> bool:
    """True when the fused row kernels take these arrays (``cpu_kernel_for``): not empty, C-contiguous, of one
    dtype (rows of the last axis, viewed as (n, C) without a copy), and any two either the very same memory
    (in place) or apart (a partial overlap would read entries already written)."""
    first = arrays[0]
    return (first.size > 0 and all(a.flags.c_contiguous and a.dtype == first.dtype for a in arrays)
            and cpu_kernel_for(*arrays)
            and all(not np.may_share_memory(a, b) or (a.shape == b.shape and a.ctypes.data == b.ctypes.data)
                    for i, a in enumerate(arrays) for b in arrays[i + 1:]))  # apart (checked first: cheaper)


def cpu_status() -> tuple[bool, str]:
    """``(enabled, reason)``: whether the ops dispatch NumPy arrays to the fused CPU kernels, and why (not)."""
    if os.environ.get(ENV_VAR, "1").strip() == "0":
        return False, f"{ENV_VAR}=0 turns the fused kernels off"
    reason = _numba_reason()
    if reason is not None:
        return False, f"no fused CPU kernels: {reason}"
    if threads.cpu_threads() < 2:
        where = "on one thread"
    elif _tbb_layer():
        where = f"on {threads.cpu_threads()} threads from {PRANGE_MIN // 1024}K elements (Numba's TBB layer)"
    else:
        where = "on the Python threads (Numba's TBB layer not in use)"
    return True, f"fused CPU kernels (Numba) on ({ENV_VAR}=0 turns them off), {where}"
