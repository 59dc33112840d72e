"""Softmax rows for the attention on NumPy arrays: the fused Numba kernel where it takes the arrays
(``fused_rows``), else the NumPy code of ``kernels/numpy/softmax.py``. Importing this module does not import
Numba (the kernel module loads on first use)."""

from __future__ import annotations

from ..numpy import softmax as numpy_softmax
from . import fused_rows


def softmax_rows(x, y, axis=-1):
    """softmax(x) along ``axis`` into y (which may be x itself), for a piece of the input."""
    if axis in (-1, x.ndim - 1) and fused_rows(x, y):
        from . import softmax as fused  # Numba, loaded on first use

        fused.softmax_rows(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), x.dtype.type(1.0))
        return
    numpy_softmax.softmax_rows(x, y, axis)


def softmax_rows_backward(dout, y, dx, axis=-1, scale=1.0):
    """dx = scale * y * (dout - sum(dout * y)) along ``axis``, into dx (which may be dout itself)."""
    if axis in (-1, y.ndim - 1) and fused_rows(dout, y, dx):
        from . import softmax as fused  # Numba, loaded on first use

        rows = [a.reshape(-1, a.shape[-1]) for a in (dout, y, dx)]
        fused.softmax_rows_backward(*rows, y.dtype.type(scale))
        return
    numpy_softmax.softmax_rows_backward(dout, y, dx, axis, scale)
