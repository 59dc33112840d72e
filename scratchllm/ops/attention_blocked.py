"""Causal attention computed in query blocks: the same numbers as ``attention_forward``, about half the work.

In causal attention, query i never looks past key i, so the upper triangle of ``q @ k^T`` is computed only
to be masked away. Splitting the queries into blocks of ``block`` rows, each block multiplies only the keys
it can see (up to its last row), which skips most of the masked triangle: with n blocks the matrix products
and the softmax cost (n + 1) / (2 n) of the full computation. Every row still sees all its visible keys at
once, so the plain softmax applies (no online rescaling as in FlashAttention) and the results equal
``attention_forward``'s up to float rounding; ``tests/ops/test_attention_blocked.py`` proves it.
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..backend import get_xp
from ..blas import matmul
from ..threads import parallel_chunks
from ._checks import check_dout
from .attention import attention_weights, causal_mask, check_qkv, matrices_backward
from .dropout import dropout_backward, dropout_forward
from .softmax import softmax_backward


def attention_blocked_forward(q, k, v, dropout=0.0, rng=None, block=64):
    """Causal multi-head attention, query block by query block.

    Shapes:
        q (B, H, T, D), k (B, H, Tk, D), v (B, H, Tk, D), Tk >= T  ->  out (B, H, T, D)

    Math, for the query rows r = i0 .. i1-1 of each block (they see keys 0 .. e-1, e = i1 + Tk - T):
        att = q[r] @ k[:e]^T / sqrt(D), masked above the diagonal       (B, H, i1 - i0, e)
        p   = softmax(att, axis=-1);  pd = dropout(p)
        out[r] = pd @ v[:e]
    """
    B, H, T, D, Tk = check_qkv(q, k, v, causal=True)
    if block < 1:
        raise ValueError(f"block must be >= 1; got {block}")
    xp = get_xp(q, k, v)
    scale = 1.0 / math.sqrt(D)
    BH = B * H  # the (batch, head) matrices are independent: pieces of them run on every CPU thread
    # (BH, T, D), (BH, Tk, D) x 2: copies when q, k, v are strided views (GPT's), made once and kept for backward
    q3, k3, v3 = (a.reshape(BH, -1, D) for a in (q, k, v))
    out = xp.empty((BH, T, D), dtype=q.dtype)  # (BH, T, D)
    blocks = []
    for i0 in range(0, T, block):
        i1 = min(i0 + block, T)
        e = i1 + Tk - T  # keys visible to the block's last row
        if xp is not np and kernels.enabled():  # scale + mask + softmax: one CUDA pass
            att = q[:, :, i0:i1] @ k[:, :, :e].swapaxes(-1, -2)  # (B, H, i1-i0, e)
            p, p_cache = kernels.scaled_causal_softmax_forward(att, scale)
            pv_done = False
        else:
            p = xp.empty((BH, i1 - i0, e), dtype=q.dtype)  # (BH, i1-i0, e)
            mask = causal_mask(i1 - i0, e, xp)  # the block's diagonal

            def weights(r):  # without dropout pd is p: its product with v right away, while in cache
                attention_weights(q3[r, i0:i1], k3[r, :e], scale, mask, p[r])
                if not dropout:
                    matmul(p[r], v3[r, :e], out=out[r, i0:i1])

            parallel_chunks(weights, BH, p.size, xp)
            p = p.reshape(B, H, i1 - i0, e)
            p_cache = (p, -1)
            pv_done = not dropout
        pd, drop_cache = dropout_forward(p, dropout, rng)  # (B, H, i1-i0, e) the whole mask: draws in order
        if not pv_done:
            pd3 = pd.reshape(BH, i1 - i0, e)
            parallel_chunks(lambda r: matmul(pd3[r], v3[r, :e], out=out[r, i0:i1]), BH, pd3.size, xp)  # pd @ v
        blocks.append((i0, i1, e, p_cache, drop_cache))
    cache = (q3, k3, v3, (B, H), blocks, scale)
    return out.reshape(B, H, T, D), cache


def attention_blocked_backward(dout, cache):
    """Gradients of ``attention_blocked_forward``: ``attention_backward`` block by block.

    Shapes:
        dout (B, H, T, D)  ->  dq (B, H, T, D), dk (B, H, Tk, D), dv (B, H, Tk, D)

    Math (per block; keys and values are shared, so their gradients ACCUMULATE over blocks):
        dv[:e] += pd^T @ dout[r]
        dp      = dropout_backward(dout[r] @ v[:e]^T)
        datt    = softmax_backward(dp) / sqrt(D)
        dq[r]   = datt @ k[:e]
        dk[:e] += datt^T @ q[r]
    """
    q3, k3, v3, (B, H), blocks, scale = cache
    BH, T, D = q3.shape
    Tk = k3.shape[1]
    check_dout(dout, (B, H, T, D))
    dout3 = dout.astype(q3.dtype, copy=False).reshape(BH, T, D)  # (BH, T, D)
    xp = get_xp(q3)
    dq = xp.empty((BH, T, D), q3.dtype)  # every row is written once
    # dk and dv accumulate over the blocks. On the CPU the last block, which sees every key (e = Tk), goes first
    # and writes them (no zeros to write beforehand); the others add to their first e rows
    on_cpu = xp is np and bool(blocks)
    dk = (xp.empty if on_cpu else xp.zeros)((BH, Tk, D), q3.dtype)
    dv = (xp.empty if on_cpu else xp.zeros)((BH, Tk, D), q3.dtype)
    for n, (i0, i1, e, p_cache, drop_cache) in enumerate(reversed(blocks) if on_cpu else blocks):
        (pd,) = dropout_backward(p_cache[0], drop_cache)  # recomputed: p * mask / (1 - dropout)
        p3, pd3 = p_cache[0].reshape(BH, i1 - i0, e), pd.reshape(BH, i1 - i0, e)
        mask, drop_scale, _ = drop_cache
        mask3 = None if mask is None else mask.reshape(BH, i1 - i0, e)
        if xp is not np:  # CuPy: whole arrays (the softmax backward is a fused kernel there)
            g = dout3[:, i0:i1]  # (BH, i1-i0, D)
            dv[:, :e] += pd3.swapaxes(-1, -2) @ g
            (dp,) = dropout_backward(g @ v3[:, :e].swapaxes(-1, -2), (mask3, drop_scale, pd3.shape))
            (datt,) = softmax_backward(dp.reshape(p_cache[0].shape), p_cache)
            datt = datt.reshape(p3.shape) * scale
            dq[:, i0:i1] = datt @ k3[:, :e]
            dk[:, :e] += datt.swapaxes(-1, -2) @ q3[:, i0:i1]
            continue
        parallel_chunks(lambda r: matrices_backward(
            dout3[r, i0:i1], q3[r, i0:i1], k3[r, :e], v3[r, :e], p3[r], pd3[r],
            None if mask3 is None else mask3[r], drop_scale, scale, dq[r, i0:i1], dk[r, :e], dv[r, :e],
            accumulate=n > 0), BH, p3.size, xp)
    return dq.reshape(B, H, T, D), dk.reshape(B, H, Tk, D), dv.reshape(B, H, Tk, D)
