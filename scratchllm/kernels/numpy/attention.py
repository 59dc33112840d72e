"""Attention on the CPU: the (batch, head) matrices in pieces on every CPU thread, their products through
``blas.matmul`` (MKL's sequential GEMM on a core that works alone), the scale, causal mask and softmax of
each piece in one fused Numba loop per row where Numba is installed (``kernels/cpu/rows.py``), in place.
Reference: ``scratchllm/ops/attention.py``; same signature, return values and cache.

``attention_weights`` and ``matrices_backward`` are the per-piece forward and backward, shared with the
blocked attention (``attention_blocked.py``).
"""

from __future__ import annotations

import math

import numpy as np

from ..blas import matmul  # a @ b (through MKL in a single-core piece or shard when it is installed: blas.py)
from ...ops.attention import causal_mask
from ...ops.dropout import dropout_backward, dropout_forward
from ..threads import parallel_chunks
from ..cpu import fused_rows
from ..cpu.rows import softmax_rows, softmax_rows_backward


def attention_forward(q, k, v, causal=True, dropout=0.0, rng=None):
    """``ops.attention_forward`` on NumPy arrays (checked by the dispatch): ``out, (q, k, v, (p, -1), drop_cache,
    scale)``."""
    B, H, T, D = q.shape
    Tk = k.shape[2]
    scale = 1.0 / math.sqrt(D)  # a Python float: keeps float32 inputs float32
    # The B*H attention matrices are independent: pieces of them run on every CPU thread (threads.py)
    q3, k3, v3 = (a.reshape(B * H, -1, D) for a in (q, k, v))  # (BH, T, D), (BH, Tk, D) x 2
    p = np.empty((B * H, T, Tk), dtype=q.dtype)  # (BH, T, Tk)
    mask = causal_mask(T, Tk, np) if causal else None  # (T, Tk) True above the diagonal
    out = np.empty((B * H, T, D), dtype=q.dtype)  # (BH, T, D)

    def weights(r):  # without dropout pd is p: out = p @ v right away, while these matrices are in cache
        attention_weights(q3[r], k3[r], scale, mask, p[r])
        if not dropout:
            matmul(p[r], v3[r], out=out[r])

    parallel_chunks(weights, B * H, p.size, np)
    p = p.reshape(B, H, T, Tk)  # (B, H, T, Tk); masked entries are exactly 0
    pd, drop_cache = dropout_forward(p, dropout, rng)  # (B, H, T, Tk) the whole mask at once: draws in order
    if dropout:
        pd3 = pd.reshape(B * H, T, Tk)
        parallel_chunks(lambda r: matmul(pd3[r], v3[r], out=out[r]), B * H, p.size, np)  # out = pd @ v
    cache = (q, k, v, (p, -1), drop_cache, scale)  # pd is not kept: backward rebuilds it from p and the mask
    return out.reshape(B, H, T, D), cache


def attention_weights(q, k, scale, mask, p):
    """p = softmax(q @ k^T * scale, -inf where ``mask``) for some of the (batch, head) matrices, into p
    (..., Tq, Tk) (C-contiguous; q and k of any layout). ``mask`` is ``causal_mask(Tq, Tk)`` or None; the fused CPU kernel masks the same entries by
    their index. Masked scores are overwritten, not added to: a NaN or inf score that a query must not see
    (a key in its future) then cannot reach its row, as in torch."""
    matmul(q, k.swapaxes(-1, -2), out=p)  # (n, Tq, Tk) att, scaled, masked and normalized in place
    if fused_rows(p):  # scale + mask + softmax in one loop per row (scratchllm/kernels/cpu/softmax.py)
        from ..cpu import softmax as fused  # Numba, loaded on first use
        p3 = p.reshape(-1, p.shape[-2], p.shape[-1])  # (n, Tq, Tk) a view (p is C-contiguous)
        fused.scaled_causal_softmax_rows(p3, p3, p.dtype.type(scale), mask is not None)  # masks as mask would
        return
    p *= scale
    if mask is not None:
        np.copyto(p, -np.inf, where=mask)
    softmax_rows(p, p)


def attention_backward(dout, cache):
    """``ops.attention_backward`` on NumPy arrays (checked by the dispatch): ``dq, dk, dv``."""
    q, k, v, p_cache, drop_cache, scale = cache
    dout = dout.astype(q.dtype, copy=False)
    (pd,) = dropout_backward(p_cache[0], drop_cache)  # (B, H, T, Tk) recomputed: p * mask / (1 - dropout)
    B, H, T, D = q.shape
    Tk = k.shape[2]
    BH = B * H
    p3, pd3, dout3 = p_cache[0].reshape(BH, T, Tk), pd.reshape(BH, T, Tk), dout.reshape(BH, T, D)
    q3, k3, v3 = (a.reshape(BH, -1, D) for a in (q, k, v))
    mask, drop_scale, _ = drop_cache
    mask3 = None if mask is None else mask.reshape(BH, T, Tk)
    dq, dk, dv = np.empty((BH, T, D), q.dtype), np.empty((BH, Tk, D), q.dtype), np.empty((BH, Tk, D), q.dtype)
    parallel_chunks(lambda r: matrices_backward(
        dout3[r], q3[r], k3[r], v3[r], p3[r], pd3[r], None if mask3 is None else mask3[r], drop_scale, scale,
        dq[r], dk[r], dv[r]), BH, p3.size, np)  # pieces of the (batch, head) matrices on every CPU thread
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)


def matrices_backward(dout, q, k, v, p, pd, mask, drop_scale, scale, dq, dk, dv, accumulate=False):
    """attention_backward for some (batch, head) matrices (..., ., .): writes dq, and dk, dv (adds to them
    when ``accumulate``: query blocks share their keys). p and pd are C-contiguous; the rest of any layout."""
    (dp,) = dropout_backward(matmul(dout, v.swapaxes(-1, -2)), (mask, drop_scale, pd.shape))  # (n, T, Tk)
    datt = dp  # a fresh product, turned into datt in place: the softmax backward, times the scale
    softmax_rows_backward(dp, p, datt, scale=scale)
    matmul(datt, k, out=dq)  # dq = datt @ k
    matmul(pd.swapaxes(-1, -2), dout, out=dv, accumulate=accumulate)  # dv (+)= pd^T @ dout
    matmul(datt.swapaxes(-1, -2), q, out=dk, accumulate=accumulate)  # dk (+)= datt^T @ q
