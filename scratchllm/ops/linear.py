"""Linear (affine) layer: ``out = x @ w + b``, weights stored (in, out) like GPT-2's Conv1D."""

from __future__ import annotations

from ..backend import get_xp
from ..blas import matmul  # a @ b (through MKL in a single-core shard when it is installed: blas.py)
from ._checks import check_dout, check_float, check_same_dtype


def linear_forward(x, w, b=None):
    """Affine map over the last axis.

    Shapes:
        x (..., Cin), w (Cin, Cout), b (Cout,) or None  ->  out (..., Cout)

    Math:
        out = x @ w + b
    """
    check_float("x", x, ndim_min=1)
    check_float("w", w, ndim=2)
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"x's last axis ({x.shape[-1]}) must equal w's first axis; w has shape {w.shape}")
    if b is not None:
        check_float("b", b, ndim=1)
        if b.shape[0] != w.shape[1]:
            raise ValueError(f"b must have shape ({w.shape[1]},) to match w {w.shape}; got {b.shape}")
    check_same_dtype(x=x, w=w, b=b)
    out = matmul(x.reshape(-1, x.shape[-1]), w)  # (N, Cout) one GEMM over all rows, not one per leading index
    if b is not None:
        out += b  # (N, Cout) in place on the fresh product
    cache = (x, w, b is not None)
    return out.reshape(x.shape[:-1] + (w.shape[1],)), cache  # (..., Cout)


def linear_backward(dout, cache, dw_out=None):
    """Gradients of ``linear_forward``.

    Shapes:
        dout (..., Cout)  ->  dx (..., Cin), dw (Cin, Cout), db (Cout,) or None

    ``dw_out``: an array (Cin, Cout) of w's dtype to write dw into, which is then returned as dw (GPT passes
    views of its flat gradient buffer: no copy afterwards); None: a new array.

    Math (rows of x flattened to N = prod(...)):
        dx = dout @ w.T
        dw = x.T @ dout          (sum over every row)
        db = sum(dout, rows)     (as ones @ dout: BLAS sums rows 3x faster than NumPy's reduction)
    """
    x, w, has_bias = cache
    Cin, Cout = w.shape
    check_dout(dout, x.shape[:-1] + (Cout,))
    if dw_out is not None and (not hasattr(dw_out, "shape") or dw_out.shape != w.shape or dw_out.dtype != w.dtype):
        raise ValueError(f"dw_out must be an array of shape {w.shape} and dtype {w.dtype}; got "
                         f"{getattr(dw_out, 'shape', type(dw_out).__name__)} {getattr(dw_out, 'dtype', '')}".rstrip())
    dout2 = dout.astype(w.dtype, copy=False).reshape(-1, Cout)  # (N, Cout)
    dx = matmul(dout2, w.T).reshape(x.shape)  # (..., Cin)
    dw = matmul(x.reshape(-1, Cin).T, dout2, out=dw_out)  # (Cin, Cout)
    db = get_xp(dout2).ones(dout2.shape[0], dtype=dout2.dtype) @ dout2 if has_bias else None  # (Cout,) row sum
    return dx, dw, db
