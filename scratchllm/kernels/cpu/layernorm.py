"""LayerNorm forward and backward as Numba CPU kernels. Reference: ``scratchllm/ops/layernorm.py``.

Same signature, return values and cache as the op: the forward returns ``out, (norm, rstd, w)`` with
``norm`` (..., C) and ``rstd`` (..., 1), so this forward's cache works with the NumPy backward and the other
way round. One loop per row does what the op does in NumPy passes: the forward reads the row twice (mean,
then variance) and writes norm and out in a third sweep; the backward reads dout and norm once for the row
means (and adds into the chunk's dw, db) and once more for dx. The op runs the rows in chunks on every
core (``threads.parallel_chunks``); each chunk's dw and db are added in chunk order, so results do not
depend on the thread count.
"""

from __future__ import annotations

import numpy as np

from ...threads import parallel_chunks
from . import ONE, REDUCE, ZERO, jit


@jit(fastmath=REDUCE)
def _forward_rows(x, w, b, eps, inv_c, out, norm, rstd):
    """Rows x (n, C) -> out, norm (n, C), rstd (n, 1):
    mean = sum(x) / C;  var = sum((x - mean)^2) / C;  rstd = 1 / sqrt(var + eps);
    norm = (x - mean) * rstd;  out = norm * w + b."""
    n, C = x.shape
    for i in range(n):
        total = ZERO
        for j in range(C):
            total += x[i, j]
        mean = total * inv_c
        sq = ZERO
        for j in range(C):
            d = x[i, j] - mean
            sq += d * d
        r = ONE / np.sqrt(sq * inv_c + eps)
        rstd[i, 0] = r
        for j in range(C):
            v = (x[i, j] - mean) * r
            norm[i, j] = v
            out[i, j] = v * w[j] + b[j]


@jit(fastmath=REDUCE)
def _backward_rows(dout, norm, rstd, w, inv_c, dx, dw, db):
    """Rows (n, C) -> dx (n, C); adds the rows' sums into dw, db (C,):
    db += sum(dout);  dw += sum(dout * norm);  dnorm = dout * w;
    dx = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))."""
    n, C = norm.shape
    for i in range(n):
        dnorm_sum = ZERO
        dnorm_norm_sum = ZERO
        for j in range(C):
            g = dout[i, j]
            dnorm = g * w[j]
            dnorm_sum += dnorm
            dnorm_norm_sum += dnorm * norm[i, j]
            db[j] += g
            dw[j] += g * norm[i, j]
        dnorm_mean = dnorm_sum * inv_c
        dnorm_norm_mean = dnorm_norm_sum * inv_c
        r = rstd[i, 0]
        for j in range(C):
            dx[i, j] = r * (dout[i, j] * w[j] - dnorm_mean - norm[i, j] * dnorm_norm_mean)


def layernorm_forward(x, w, b, eps=1e-5):
    """``ops.layernorm_forward`` on NumPy arrays (checked by the op): ``out, (norm, rstd, w)``."""
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x.reshape(-1, C))  # (N, C) rows
    w, b = np.ascontiguousarray(w), np.ascontiguousarray(b)
    out, norm = np.empty_like(x2), np.empty_like(x2)  # (N, C)
    rstd = np.empty((x2.shape[0], 1), dtype=x.dtype)  # (N, 1)
    t = x.dtype.type  # scalars in x's dtype keep float32 arithmetic float32
    parallel_chunks(lambda r: _forward_rows(x2[r], w, b, t(eps), t(1.0 / C), out[r], norm[r], rstd[r]),
                    x2.shape[0], x2.size, np, fused=True)
    return out.reshape(x.shape), (norm.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)), w)


def layernorm_backward(dout, cache):
    """``ops.layernorm_backward`` on NumPy arrays (checked by the op): ``dx, dw, db``."""
    norm, rstd, w = cache
    C = norm.shape[-1]
    dout2 = np.ascontiguousarray(dout.astype(norm.dtype, copy=False).reshape(-1, C))  # (N, C)
    norm2 = np.ascontiguousarray(norm.reshape(-1, C))  # (N, C)
    rstd2 = rstd.reshape(-1, 1)  # (N, 1)
    w = np.ascontiguousarray(w)
    dx = np.empty_like(norm2)  # (N, C)
    inv_c = norm.dtype.type(1.0 / C)

    def rows(r):
        dw, db = np.zeros(C, norm.dtype), np.zeros(C, norm.dtype)  # this chunk's sums over its rows
        _backward_rows(dout2[r], norm2[r], rstd2[r], w, inv_c, dx[r], dw, db)
        return dw, db

    parts = parallel_chunks(rows, norm2.shape[0], norm2.size, np, fused=True)
    dw, db = parts[0]
    for dw_part, db_part in parts[1:]:  # added in chunk order: the same sums on any number of threads
        dw += dw_part
        db += db_part
    return dx.reshape(norm.shape), dw, db
