"""LayerNorm in NumPy, in pieces of rows on every CPU thread. Reference: ``scratchllm/ops/layernorm.py``.

Same signature, return values and cache as the op (``out, (norm, rstd, w)``). Faster than the textbook by
writing each temporary in place and by summing rows as matrix products (one pass, no (N, C) temporary).
Each piece's dw and db are added in piece order, so the result does not depend on the thread count.
"""

from __future__ import annotations

import numpy as np

from ..threads import parallel_chunks


def layernorm_forward(x, w, b, eps=1e-5):
    """``ops.layernorm_forward`` on NumPy arrays (checked by the dispatch): ``out, (norm, rstd, w)``."""
    C = x.shape[-1]
    x2 = x.reshape(-1, C)  # (N, C) rows, cut into pieces that run on every CPU thread (threads.py)
    out, norm = np.empty_like(x2), np.empty_like(x2)  # (N, C)
    rstd = np.empty((x2.shape[0], 1), dtype=x.dtype)  # (N, 1)
    parallel_chunks(lambda r: _forward_rows(x2[r], w, b, eps, out[r], norm[r], rstd[r]), x2.shape[0], x2.size, np)
    cache = (norm.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)), w)  # x and mean are not kept
    return out.reshape(x.shape), cache


def row_dot(a, b):
    """sum(a * b) over the last axis of (n, C) arrays, kept as (n, 1): a dot product per row by matmul, one
    pass and no (n, C) temporary (3x faster than the product and a NumPy reduction)."""
    return (a[:, None, :] @ b[:, :, None])[:, 0]


def _forward_rows(x, w, b, eps, out, norm, rstd):
    """The forward on some rows x (n, C), into out, norm (n, C) and rstd (n, 1)."""
    C = x.shape[-1]
    mean = (x @ np.full(C, 1.0 / C, dtype=x.dtype))[:, None]  # (n, 1) row means, as a matrix-vector product
    np.subtract(x, mean, out=norm)  # (n, C) xc, normalized in place below
    var = row_dot(norm, norm) / C  # (n, 1)
    var += eps
    np.divide(1.0, np.sqrt(var, out=var), out=rstd)  # (n, 1) rstd = 1 / sqrt(var + eps)
    norm *= rstd  # (n, C) norm = xc * rstd
    np.multiply(norm, w, out=out)  # (n, C)
    out += b


def layernorm_backward(dout, cache):
    """``ops.layernorm_backward`` on NumPy arrays (checked by the dispatch): ``dx, dw, db``."""
    norm, rstd, w = cache
    dout = dout.astype(norm.dtype, copy=False)
    C = norm.shape[-1]
    dout2, norm2, rstd2 = dout.reshape(-1, C), norm.reshape(-1, C), rstd.reshape(-1, 1)  # rows, as the forward
    dx = np.empty_like(norm2)  # (N, C)
    parts = parallel_chunks(lambda r: _backward_rows(dout2[r], norm2[r], rstd2[r], w, dx[r]),
                            norm2.shape[0], norm2.size, np)
    dw, db = parts[0]
    for dw_part, db_part in parts[1:]:  # the pieces' sums over their rows, added in order
        dw = dw + dw_part
        db = db + db_part
    return dx.reshape(norm.shape), dw, db


def _backward_rows(dout, norm, rstd, w, dx):
    """The backward on some rows (n, C), into dx; returns these rows' (dw, db) sums."""
    n, C = norm.shape
    ones = np.ones(n, dtype=norm.dtype)
    db = ones @ dout  # (C,) sums over the rows, as matrix-vector products
    t = np.multiply(dout, norm)  # (n, C)
    dw = ones @ t  # (C,)
    dnorm = np.multiply(dout, w, out=dx)  # (n, C) in dx's buffer: dx is built from it in place
    # dx = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
    t_mean = row_dot(dnorm, norm) / C  # (n, 1) mean(dnorm * norm)
    dnorm_mean = (dnorm @ np.full(C, 1.0 / C, dtype=norm.dtype))[:, None]  # (n, 1) mean(dnorm)
    np.multiply(norm, t_mean, out=t)  # (n, C) norm * mean(dnorm * norm)
    dnorm -= dnorm_mean
    dnorm -= t
    dnorm *= rstd  # (n, C) now dx
    return dw, db
