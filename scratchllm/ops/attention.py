"""Scaled dot-product attention over heads, causal or not: ``softmax(q k^T / sqrt(D)) v``.

The code below computes the whole T x Tk score matrix, the way the formula reads. Causal attention without
dropout on NumPy from ``BLOCKED_MIN_T`` queries on runs ``attention_blocked`` instead (as the CPU kernels stand
in for the NumPy code of other ops): the same numbers up to float rounding, proven equal in
``tests/ops/test_attention.py``, with the upper triangle, which the mask throws away, mostly never multiplied.
Set ``BLOCKED_MIN_T`` to ``math.inf`` to run the code below at every size.
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..backend import get_xp
from ..blas import matmul  # a @ b (through MKL in a single-core piece or shard when it is installed: blas.py)
from ._checks import check_dout, check_float, check_same_dtype
from .dropout import dropout_backward, dropout_forward
from ..threads import parallel_chunks
from ..kernels.cpu import fused_rows
from ..kernels.cpu.rows import softmax_rows, softmax_rows_backward
from .softmax import softmax_backward

# From this many queries causal attention without dropout on the CPU runs in query blocks, of 64 rows below
# T = 512 and 128 from there. Forward + backward, median of interleaved runs on the 2-core CI machine (D64, H12):
# B1 T256 6.0 -> 5.3 ms, B1 T512 24.3 -> 17.0 ms, B4 T1024 222 -> 139 ms. At T128 the two blocks ran no faster
# than the whole matrix (each block alone is too little work to split across the threads).
BLOCKED_MIN_T = 256


def causal_mask(Tq, Tk, xp):
    """Boolean (Tq, Tk) mask, True where query i may NOT look at key j.

    Query i sits at absolute position i + (Tk - Tq) (the queries are the last Tq of the Tk positions,
    which is what incremental decoding with a KV cache needs); it sees keys j <= that position.
    """
    i = xp.arange(Tq)[:, None] + (Tk - Tq)  # (Tq, 1)
    j = xp.arange(Tk)[None, :]  # (1, Tk)
    return j > i  # (Tq, Tk)


def check_qkv(q, k, v, causal=True):
    """Validate attention inputs; returns ``(B, H, T, D, Tk)``."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        check_float(name, a, ndim=4)
    check_same_dtype(q=q, k=k, v=v)
    B, H, T, D = q.shape
    Tk = k.shape[2]
    if k.shape != (B, H, Tk, D) or v.shape != k.shape:
        raise ValueError(f"k and v must have shape (B, H, Tk, D) = ({B}, {H}, Tk, {D}); got k {k.shape}, v {v.shape}")
    if causal and Tk < T:
        raise ValueError(f"causal attention needs at least as many keys as queries; got T={T} queries, Tk={Tk} keys")
    return B, H, T, D, Tk


def attention_forward(q, k, v, causal=True, dropout=0.0, rng=None):
    """Multi-head scaled dot-product attention, with optional dropout on the attention weights.

    Shapes:
        q (B, H, T, D), k (B, H, Tk, D), v (B, H, Tk, D)  ->  out (B, H, T, D)
        (Tk = T for self-attention; Tk > T when the queries are the last T of Tk positions)

    Math:
        att = q @ k^T / sqrt(D)                     (B, H, T, Tk)
        att[..., i, j] = -inf where j is in the future of i   (causal only)
        p   = softmax(att, axis=-1)
        pd  = dropout(p, dropout, rng)              (the identity when dropout = 0)
        out = pd @ v
    """
    B, H, T, D, Tk = check_qkv(q, k, v, causal)
    xp = get_xp(q, k, v)
    if causal and dropout == 0 and xp is np and T >= BLOCKED_MIN_T:  # the same numbers, about half the work
        from .attention_blocked import attention_blocked_forward
        out, blocked_cache = attention_blocked_forward(q, k, v, block=64 if T < 512 else 128)
        return out, (blocked_cache,)  # a 1-tuple: attention_backward hands it to attention_blocked_backward
    scale = 1.0 / math.sqrt(D)  # a Python float: keeps float32 inputs float32
    if xp is not np and kernels.enabled():  # scale + mask + softmax: one CUDA pass, same p
        att = q @ k.swapaxes(-1, -2)  # (B, H, T, Tk)
        p, p_cache = kernels.scaled_causal_softmax_forward(att, scale, causal)
        pd, drop_cache = dropout_forward(p, dropout, rng)  # (B, H, T, Tk)
        return pd @ v, (q, k, v, p_cache, drop_cache, scale)
    # The B*H attention matrices are independent: pieces of them run on every CPU thread (threads.py)
    q3, k3, v3 = (a.reshape(B * H, -1, D) for a in (q, k, v))  # (BH, T, D), (BH, Tk, D) x 2
    p = xp.empty((B * H, T, Tk), dtype=q.dtype)  # (BH, T, Tk)
    mask = causal_mask(T, Tk, xp) if causal else None  # (T, Tk) True above the diagonal
    out = xp.empty((B * H, T, D), dtype=q.dtype)  # (BH, T, D)

    def weights(r):  # without dropout pd is p: out = p @ v right away, while these matrices are in cache
        attention_weights(q3[r], k3[r], scale, mask, p[r])
        if not dropout:
            matmul(p[r], v3[r], out=out[r])

    parallel_chunks(weights, B * H, p.size, xp)
    p = p.reshape(B, H, T, Tk)  # (B, H, T, Tk); masked entries are exactly 0
    pd, drop_cache = dropout_forward(p, dropout, rng)  # (B, H, T, Tk) the whole mask at once: draws in order
    if dropout:
        pd3 = pd.reshape(B * H, T, Tk)
        parallel_chunks(lambda r: matmul(pd3[r], v3[r], out=out[r]), B * H, p.size, xp)  # out = pd @ v
    cache = (q, k, v, (p, -1), drop_cache, scale)  # pd is not kept: backward rebuilds it from p and the mask
    return out.reshape(B, H, T, D), cache


def attention_weights(q, k, scale, mask, p):
    """p = softmax(q @ k^T * scale, -inf where ``mask``) for some of the (batch, head) matrices, into p
    (..., Tq, Tk) (C-contiguous; q and k of any layout). ``mask`` is ``causal_mask(Tq, Tk)`` or None; the fused CPU kernel masks the same entries by
    their index. Masked scores are overwritten, not added to: a NaN or inf score that a query must not see
    (a key in its future) then cannot reach its row, as in torch."""
    xp = get_xp(q)
    matmul(q, k.swapaxes(-1, -2), out=p)  # (n, Tq, Tk) att, scaled, masked and normalized in place
    if fused_rows(p):  # scale + mask + softmax in one loop per row (scratchllm/kernels/cpu/softmax.py)
        from ..kernels.cpu import softmax as fused
        p3 = p.reshape(-1, p.shape[-2], p.shape[-1])  # (n, Tq, Tk) a view (p is C-contiguous)
        fused.scaled_causal_softmax_rows(p3, p3, p.dtype.type(scale), mask is not None)  # masks as mask would
        return
    p *= scale
    if mask is not None:
        xp.copyto(p, -xp.inf, where=mask)
    softmax_rows(p, p)


def attention_backward(dout, cache):
    """Gradients of ``attention_forward``.

    Shapes:
        dout (B, H, T, D)  ->  dq (B, H, T, D), dk (B, H, Tk, D), dv (B, H, Tk, D)

    Math (the forward in reverse):
        dv   = pd^T @ dout
        dpd  = dout @ v^T
        dp   = dropout_backward(dpd)                (the same mask and scale; dp = dpd without dropout)
        datt = p * (dp - sum(dp * p, axis=-1))     (softmax backward; 0 wherever p is 0, so masked
                                                    entries get no gradient and never NaN)
        dq   = datt @ k / sqrt(D)
        dk   = datt^T @ q / sqrt(D)
    """
    if len(cache) == 1:  # the forward ran in query blocks (BLOCKED_MIN_T)
        from .attention_blocked import attention_blocked_backward
        return attention_blocked_backward(dout, cache[0])
    q, k, v, p_cache, drop_cache, scale = cache
    check_dout(dout, q.shape)
    dout = dout.astype(q.dtype, copy=False)
    xp = get_xp(q)
    (pd,) = dropout_backward(p_cache[0], drop_cache)  # (B, H, T, Tk) recomputed: p * mask / (1 - dropout)
    if xp is not np:  # CuPy: whole arrays (the softmax backward is a fused kernel there)
        dv = pd.swapaxes(-1, -2) @ dout  # (B, H, Tk, D)
        (dp,) = dropout_backward(dout @ v.swapaxes(-1, -2), drop_cache)  # (B, H, T, Tk)
        (datt,) = (kernels.softmax_backward if kernels.enabled() else softmax_backward)(dp, p_cache)  # (B, H, T, Tk)
        datt = datt * scale  # (B, H, T, Tk); the scale of att = q k^T * scale
        return datt @ k, datt.swapaxes(-1, -2) @ q, dv
    B, H, T, D = q.shape
    Tk = k.shape[2]
    BH = B * H
    p3, pd3, dout3 = p_cache[0].reshape(BH, T, Tk), pd.reshape(BH, T, Tk), dout.reshape(BH, T, D)
    q3, k3, v3 = (a.reshape(BH, -1, D) for a in (q, k, v))
    mask, drop_scale, _ = drop_cache
    mask3 = None if mask is None else mask.reshape(BH, T, Tk)
    dq, dk, dv = xp.empty((BH, T, D), q.dtype), xp.empty((BH, Tk, D), q.dtype), xp.empty((BH, Tk, D), q.dtype)
    parallel_chunks(lambda r: matrices_backward(
        dout3[r], q3[r], k3[r], v3[r], p3[r], pd3[r], None if mask3 is None else mask3[r], drop_scale, scale,
        dq[r], dk[r], dv[r]), BH, p3.size, xp)  # pieces of the (batch, head) matrices on every CPU thread
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
