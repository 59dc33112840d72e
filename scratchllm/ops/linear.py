"""Linear (affine) layer: ``out = x @ w + b``, weights stored (in, out) like GPT-2's Conv1D.

The textbook: the forward and backward as their Math reads. The faster way (one GEMM over all rows through
``blas.matmul``, MKL's in a single-core shard; the bias added in place; dw written where the caller wants it)
is a registered implementation in ``scratchllm/kernels/``; the model runs it through
``scratchllm.kernels.dispatch``.
"""

from __future__ import annotations

from ._checks import check_dout, check_float, check_same_dtype


def linear_forward(x, w, b=None):
    """Affine map over the last axis.

    Shapes:
        x (..., Cin), w (Cin, Cout), b (Cout,) or None  ->  out (..., Cout)

    Math:
        out = x @ w + b
    """
    check_inputs(x, w, b)
    out = x @ w  # (..., Cout)
    if b is not None:
        out = out + b  # (..., Cout)
    cache = (x, w, b is not None)
    return out, cache


def linear_backward(dout, cache):
    """Gradients of ``linear_forward``.

    Shapes:
        dout (..., Cout)  ->  dx (..., Cin), dw (Cin, Cout), db (Cout,) or None

    Math (x2, dout2: the rows of x and dout, leading axes flattened to N = prod(...)):
        dx = dout @ w.T
        dw = x2.T @ dout2        (a sum over every row)
        db = sum(dout2, rows)    (b is added to every row: its gradient sums over them)
    """
    x, w, has_bias = cache
    Cin, Cout = w.shape
    check_dout(dout, x.shape[:-1] + (Cout,))
    dout = dout.astype(w.dtype, copy=False)
    x2, dout2 = x.reshape(-1, Cin), dout.reshape(-1, Cout)  # (N, Cin), (N, Cout)
    dx = dout @ w.T  # (..., Cin)
    dw = x2.T @ dout2  # (Cin, Cout)
    db = dout2.sum(axis=0) if has_bias else None  # (Cout,)
    return dx, dw, db


def check_inputs(x, w, b=None):
    """x (..., Cin), w (Cin, Cout), b (Cout,) or None, one float dtype: else an error naming the argument."""
    check_float("x", x, ndim_min=1)
    check_float("w", w, ndim=2)
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"x's last axis ({x.shape[-1]}) must equal w's first axis; w has shape {w.shape}")
    if b is not None:
        check_float("b", b, ndim=1)
        if b.shape[0] != w.shape[1]:
            raise ValueError(f"b must have shape ({w.shape[1]},) to match w {w.shape}; got {b.shape}")
    check_same_dtype(x=x, w=w, b=b)
