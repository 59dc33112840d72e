"""One pass over a flat gradient buffer on every core: the shards' sum (``DataParallel.backward``) and the norm and
scale of ``clip_grad_norm``. References: ``np.add(out, other, out=out)``, ``np.linalg.norm(x)``, ``x *= factor``.

GPT's gradients tile one flat buffer (``flat.py``), so the sum of the batch shards' gradients and the clipping
are each one pass over 0.8 M floats for nanoGPT's CPU recipe: 0.1-0.2 ms on one core, taken while the other
core waits for the next step. Numba's ``prange`` (the TBB layer: a 2 us launch) halves them. The pieces have
fixed sizes (``prange_rows``), so the norm's per-piece sums, added in order, do not depend on the thread count.
The norm sums squares in float64 (then rounds to the buffer's dtype): at least as accurate as the BLAS dot.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .. import cpu_kernel_for
from . import jit, prange_rows


@jit()
def _add_into(out, other):
    for i in range(out.shape[0]):
        out[i] += other[i]


@jit(fastmath={"reassoc", "contract"})
def _sum_squares(x):
    s = 0.0
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        s += v * v
    return s


@jit()
def _scale(x, factor):
    for i in range(x.shape[0]):
        x[i] *= factor


# The drivers call the loops above on each piece (a loop written inside the prange body does not vectorize)
@jit(parallel=True)
def _add_into_par(out, other, piece):
    """out += other over pieces of ``piece`` elements on every core."""
    for k in prange((out.shape[0] + piece - 1) // piece):
        s = slice(k * piece, min((k + 1) * piece, out.shape[0]))
        _add_into(out[s], other[s])


@jit(parallel=True)
def _sum_squares_par(x, piece):
    """sum(x ** 2) in float64: one sum per piece of ``piece`` elements (vector lanes within it), then the
    pieces' sums in order."""
    count = (x.shape[0] + piece - 1) // piece
    sums = np.zeros(count, dtype=np.float64)
    for k in prange(count):
        sums[k] = _sum_squares(x[k * piece:min((k + 1) * piece, x.shape[0])])
    total = 0.0
    for k in range(count):
        total += sums[k]
    return total


@jit(parallel=True)
def _scale_par(x, factor, piece):
    """x *= factor over pieces of ``piece`` elements on every core."""
    for k in prange((x.shape[0] + piece - 1) // piece):
        _scale(x[k * piece:min((k + 1) * piece, x.shape[0])], factor)


def _piece(*arrays) -> int:
    """Elements per piece when the kernels take these 1-D buffers (plain, contiguous, one float dtype, on
    every core through prange: ``prange_rows``), else 0."""
    first = arrays[0]
    if not (cpu_kernel_for(*arrays) and all(a.ndim == 1 and a.flags.c_contiguous and a.dtype == first.dtype
                                            and a.shape == first.shape for a in arrays)):
        return 0
    return prange_rows(first.size, first.size)


def add_into(out, other) -> bool:
    """``out += other`` on every core; False (nothing done) where the kernel does not apply."""
    piece = _piece(out, other)
    if not piece or np.may_share_memory(out, other):
        return False
    _add_into_par(out, other, piece)
    return True


def norm(x):
    """``np.linalg.norm(x)`` (a 0-d array of x's dtype) on every core, or None where the kernel does not apply."""
    piece = _piece(x)
    if not piece:
        return None
    return x.dtype.type(np.sqrt(_sum_squares_par(x, piece)))


def scale(x, factor) -> bool:
    """``x *= factor`` (factor in x's dtype) on every core; False (nothing done) where the kernel does not apply."""
    piece = _piece(x)
    if not piece:
        return False
    _scale_par(x, x.dtype.type(factor), piece)
    return True
