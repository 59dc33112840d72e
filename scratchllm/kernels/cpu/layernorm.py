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
from numba import prange

from ..threads import parallel_chunks
from . import ONE, REDUCE, ZERO, jit, prange_rows

BACKWARD_PIECE = 1 << 14  # elements per piece of the backward, whose sums for dw and db are kept per piece


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


@jit(fastmath=REDUCE, parallel=True)
def _forward_par(x, w, b, eps, inv_c, out, norm, rstd, rows):
    """``_forward_rows`` over pieces of ``rows`` rows on every core (``prange_rows``)."""
    for k in prange((x.shape[0] + rows - 1) // rows):
        r = slice(k * rows, min((k + 1) * rows, x.shape[0]))
        _forward_rows(x[r], w, b, eps, inv_c, out[r], norm[r], rstd[r])


@jit(fastmath=REDUCE)
def _backward_pieces(dout, norm, rstd, w, inv_c, dx, dws, dbs, rows):
    """``_backward_rows`` over pieces of ``rows`` rows, piece k's sums into dws[k], dbs[k] (pieces, C)."""
    for k in range(dws.shape[0]):
        r = slice(k * rows, min((k + 1) * rows, norm.shape[0]))
        _backward_rows(dout[r], norm[r], rstd[r], w, inv_c, dx[r], dws[k], dbs[k])


@jit(fastmath=REDUCE, parallel=True)
def _backward_par(dout, norm, rstd, w, inv_c, dx, dws, dbs, rows):
    """``_backward_pieces`` with the pieces on every core (``prange_rows``)."""
    for k in prange(dws.shape[0]):
        r = slice(k * rows, min((k + 1) * rows, norm.shape[0]))
        _backward_rows(dout[r], norm[r], rstd[r], w, inv_c, dx[r], dws[k], dbs[k])


def layernorm_forward(x, w, b, eps=1e-5):
    """``ops.layernorm_forward`` on NumPy arrays (checked by the op): ``out, (norm, rstd, w)``."""
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x.reshape(-1, C))  # (N, C) rows
    w, b = np.ascontiguousarray(w), np.ascontiguousarray(b)
    out, norm = np.empty_like(x2), np.empty_like(x2)  # (N, C)
    rstd = np.empty((x2.shape[0], 1), dtype=x.dtype)  # (N, 1)
    t = x.dtype.type  # scalars in x's dtype keep float32 arithmetic float32
    rows = prange_rows(x2.shape[0], x2.size)
    if rows:
        _forward_par(x2, w, b, t(eps), t(1.0 / C), out, norm, rstd, rows)
    else:
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
    N = norm2.shape[0]
    rows = max(1, BACKWARD_PIECE * N // max(norm2.size, 1), -(-N // 256))  # fixed by the shape alone; at most
    # 256 pieces, so the pieces' sums (pieces, C) stay small even for rows longer than a piece
    pieces = -(-N // rows)
    dws, dbs = np.zeros((pieces, C), norm.dtype), np.zeros((pieces, C), norm.dtype)  # each piece's sums
    if prange_rows(N, norm2.size):
        _backward_par(dout2, norm2, rstd2, w, inv_c, dx, dws, dbs, rows)
    else:  # the same pieces on the Python threads, or in line
        def run(ks):  # pieces ks, i.e. rows r
            r = slice(ks.start * rows, ks.stop * rows)
            _backward_pieces(dout2[r], norm2[r], rstd2[r], w, inv_c, dx[r], dws[ks], dbs[ks], rows)

        parallel_chunks(run, pieces, norm2.size, np, fused=True)
    dw, db = dws.sum(axis=0), dbs.sum(axis=0)  # (C,) the pieces' sums added in piece order, whatever the threads
    return dx.reshape(norm.shape), dw, db
