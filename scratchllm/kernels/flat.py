"""One contiguous buffer for many arrays: the layout the fused optimizers update in one pass.

GPT keeps its parameters (and gradients) as views of one flat buffer, weights >= 2-D first, so each
of ``decay_groups``' two groups is one contiguous stretch; ``Optimizer.step`` recognises such a stretch with
``flat_span`` and updates it at once.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_xp


def flat_order(params) -> list:
    """The names of ``params`` in flat-buffer order: weights (>= 2-D) first, then vectors (biases, norms), each
    group in the dict's order. AdamW's two decay groups are then two stretches of the buffer."""
    return sorted(params, key=lambda name: params[name].ndim < 2)


def flatten_params(params, xp=None, dtype=None):
    """Copy a dict of arrays into ONE contiguous 1-D buffer; return ``(flat, views)``.

    ``views`` maps each name, in the dict's order, to a view of ``flat`` with that array's shape and values.
    Optimizers update a group of such views in one pass (module docstring). ``xp`` (default: the arrays'
    backend) and ``dtype`` (default: the first array's) choose the buffer's backend and dtype.
    """
    arrays = list(params.values())
    xp = xp or get_xp(*arrays)
    dtype = np.dtype(dtype or (arrays[0].dtype if arrays else np.float32))
    sizes = [int(np.prod(a.shape, dtype=np.int64)) for a in arrays]
    flat = xp.empty(sum(sizes), dtype=dtype)
    views, offset = {}, 0
    for (name, a), n in zip(params.items(), sizes):
        views[name] = flat[offset:offset + n].reshape(a.shape)
        views[name][...] = xp.asarray(a, dtype=dtype)
        offset += n
    return flat, views


def empty_flat(like):
    """An uninitialised flat buffer and views into it shaped like the arrays of the dict ``like`` (its order,
    backend and dtype): ``flatten_params`` without the copy, for arrays about to be written."""
    arrays = list(like.values())
    xp = get_xp(*arrays)
    flat = xp.empty(sum(int(a.size) for a in arrays), dtype=arrays[0].dtype)
    views, offset = {}, 0
    for name, a in like.items():
        views[name] = flat[offset:offset + a.size].reshape(a.shape)
        offset += a.size
    return flat, views


def buffer_root(a):
    """The array that owns a view's memory (NumPy and CuPy keep it in ``.base``; an array made over a buffer,
    such as shared memory, has that buffer as its base and is the root itself)."""
    while getattr(a, "base", None) is not None and hasattr(a.base, "nbytes") and hasattr(a.base, "dtype"):
        a = a.base
    return a


def flat_span(arrays):
    """``(span, offsets)`` when ``arrays`` are C-contiguous views of one buffer (of their dtype) that exactly
    tile one stretch of it, in any order: ``span`` is that stretch (1-D) and ``offsets[i]`` the element offset of
    ``arrays[i]`` in it. ``None`` for any other layout. Reads pointers only: no data, no device sync."""
    if not arrays:
        return None
    root, dtype = buffer_root(arrays[0]), arrays[0].dtype
    if root.dtype != dtype or not root.flags.c_contiguous:
        return None
    xp = get_xp(root)
    ptr = (lambda a: a.ctypes.data) if xp is np else (lambda a: a.data.ptr)
    base, offsets = ptr(root), []
    for a in arrays:
        if buffer_root(a) is not root or a.dtype != dtype or not a.flags.c_contiguous:
            return None
        delta, rem = divmod(ptr(a) - base, dtype.itemsize)
        if rem:
            return None
        offsets.append(delta)
    lo = pos = min(offsets)
    for i in sorted(range(len(arrays)), key=offsets.__getitem__):
        if offsets[i] != pos:  # a gap or an overlap
            return None
        pos += arrays[i].size
    return root.reshape(-1)[lo:pos], [o - lo for o in offsets]


# Adding one flat buffer into another takes one thread below this many elements, when the CPU kernels' prange
# loop is not there (measured: 0.81 M floats 0.33 ms on one thread, 0.70 ms in pieces on two Python threads;
# 4 M: 1.6 against 1.3 ms; 30 M: 12.7 against 7.6 ms)
SUM_PARALLEL_MIN = 1 << 21


def cpu_flat_kernels():
    """The flat-buffer kernels (``kernels/cpu/flat.py``: sum, norm and scale on every core through prange)
    when the CPU kernels are on, else None."""
    from .. import kernels

    if not kernels.cpu_enabled():
        return None
    from .cpu import flat

    return flat


def add_into(out, other):
    """``out += other`` for two NumPy flat buffers of one layout (DataParallel's sum of its shards' gradients), in one
    pass: through the prange kernel, else on this thread, else (from ``SUM_PARALLEL_MIN``) in pieces on every
    core. Elementwise, so the same bits on every path."""
    from .threads import parallel_chunks

    fused = cpu_flat_kernels()
    if fused is not None and fused.add_into(out, other):
        return
    if out.size < SUM_PARALLEL_MIN:
        out += other
    else:
        parallel_chunks(lambda r: np.add(out[r], other[r], out=out[r]), out.size, out.size, np)
