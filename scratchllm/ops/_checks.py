"""Input validation shared by the ops: clear errors that name the argument and what was expected."""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = ("float32", "float64")
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # compared as dtypes: no string per call


def _describe(a) -> str:
    shape = getattr(a, "shape", None)
    dtype = getattr(a, "dtype", None)
    if shape is None:
        return type(a).__name__
    return f"{type(a).__name__} of shape {tuple(shape)} and dtype {dtype}"


def check_float(name: str, a, ndim_min: int = 0, ndim: int | None = None) -> None:
    """``a`` must be a float32/float64 array with ``ndim`` (or at least ``ndim_min``) dimensions."""
    dtype = getattr(a, "dtype", None)
    if dtype is None or getattr(a, "shape", None) is None:
        raise TypeError(f"{name} must be a NumPy or CuPy array; got {_describe(a)}")
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64; got {_describe(a)}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions; got {_describe(a)}")
    if a.ndim < ndim_min:
        raise ValueError(f"{name} must have at least {ndim_min} dimension(s); got {_describe(a)}")


def check_int(name: str, a) -> None:
    """``a`` must be an integer array (token ids, targets)."""
    dtype = getattr(a, "dtype", None)
    if dtype is None or getattr(a, "shape", None) is None:
        raise TypeError(f"{name} must be an integer NumPy or CuPy array; got {_describe(a)}")
    if dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype; got {_describe(a)}")


def check_same_dtype(**arrays) -> None:
    """All given (non-None) float arrays share one dtype: no silent float32 -> float64 promotion."""
    named = [(k, v) for k, v in arrays.items() if v is not None]
    first_name, first = named[0]
    for k, v in named[1:]:
        if v.dtype != first.dtype:
            raise TypeError(f"{k} must have the same dtype as {first_name} ({first.dtype}); got {v.dtype}")


def check_dout(dout, out_shape, dtype=None) -> None:
    """The upstream gradient must have the forward output's shape."""
    shape = getattr(dout, "shape", None)
    if shape is None:
        raise TypeError(f"dout must be an array of shape {tuple(out_shape)}; got {_describe(dout)}")
    if tuple(shape) != tuple(out_shape):
        raise ValueError(f"dout must have the forward output's shape {tuple(out_shape)}; got {tuple(shape)}")
