"""Linear through ``blas.matmul``: one GEMM over all rows (MKL's sequential GEMM on a core that works alone,
NumPy's BLAS otherwise), the bias added in place on the fresh product, db as ones @ dout (BLAS sums rows 3x
faster than NumPy's reduction), and dw written into a given array. Reference: ``scratchllm/ops/linear.py``.
Any backend: ``blas.matmul`` hands CuPy arrays to CuPy's own product (cuBLAS), with ``out`` as well."""

from __future__ import annotations

from ...backend import get_xp
from ..blas import matmul


def linear_forward(x, w, b=None):
    """``ops.linear_forward`` (checked by the dispatch): ``out, (x, w, has_bias)``."""
    out = matmul(x.reshape(-1, x.shape[-1]), w)  # (N, Cout) one GEMM over all rows, not one per leading index
    if b is not None:
        out += b  # (N, Cout) in place on the fresh product
    return out.reshape(x.shape[:-1] + (w.shape[1],)), (x, w, b is not None)  # (..., Cout)


def linear_backward(dout, cache, dw_out=None):
    """``ops.linear_backward``: ``dx, dw, db``; dw written into ``dw_out`` when given (checked by the dispatch:
    (Cin, Cout) of w's dtype)."""
    x, w, has_bias = cache
    Cin, Cout = w.shape
    dout2 = dout.astype(w.dtype, copy=False).reshape(-1, Cout)  # (N, Cout)
    dx = matmul(dout2, w.T).reshape(x.shape)  # (..., Cin)
    dw = matmul(x.reshape(-1, Cin).T, dout2, out=dw_out)  # (Cin, Cout)
    db = get_xp(dout2).ones(dout2.shape[0], dtype=dout2.dtype) @ dout2 if has_bias else None  # (Cout,) row sum
    return dx, dw, db
