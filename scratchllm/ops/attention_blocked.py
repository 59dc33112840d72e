"""Causal attention computed in query blocks: the same numbers as ``attention_forward``, about half the work.

In causal attention, query i never looks past key i, so the upper triangle of ``q @ k^T`` is computed only
to be masked away. Splitting the queries into blocks of ``block`` rows, each block multiplies only the keys
it can see (up to its last row), which skips most of the masked triangle: with n blocks the matrix products
and the softmax cost (n + 1) / (2 n) of the full computation. Every row still sees all its visible keys at
once, so the plain softmax applies (no online rescaling as in FlashAttention) and the results equal
``attention_forward``'s up to float rounding; ``tests/ops/test_attention_blocked.py`` proves it.

The textbook, block by block as the Math reads; the fast implementation (the (batch, head) matrices in pieces
on every thread, read and written in GPT's layouts) is registered in ``scratchllm/kernels/``.
"""

from __future__ import annotations

import math

from ..backend import get_xp
from ._checks import check_dout
from .attention import causal_mask, check_inputs as check_attention_inputs, repeat_kv, sum_groups
from .dropout import dropout_backward, dropout_forward
from .softmax import softmax_backward, softmax_forward


def attention_blocked_forward(q, k, v, dropout=0.0, rng=None, block=64):
    """Causal multi-head attention, query block by query block.

    Shapes:
        q (B, H, T, D), k (B, Hk, Tk, D), v (B, Hk, Tk, D), Tk >= T, Hk dividing H  ->  out (B, H, T, D)
        (Hk < H: grouped-query attention, k and v repeated to H heads first, as in ``attention_forward``)

    Math, for the query rows r = i0 .. i1-1 of each block (they see keys 0 .. e-1, e = i1 + Tk - T):
        att = q[r] @ k[:e]^T / sqrt(D), masked above the diagonal       (B, H, i1 - i0, e)
        p   = softmax(att, axis=-1);  pd = dropout(p)
        out[r] = pd @ v[:e]
    Dropout masks are drawn block by block, in order.
    """
    B, H, T, D, Tk = check_inputs(q, k, v, dropout, rng, block)
    xp = get_xp(q, k, v)
    scale = 1.0 / math.sqrt(D)
    G = H // k.shape[1]  # query heads per key/value head
    kr, vr = repeat_kv(k, G), repeat_kv(v, G)  # (B, H, Tk, D) each
    out = xp.empty((B, H, T, D), dtype=q.dtype)  # (B, H, T, D): every row is written once below
    blocks = []
    for i0 in range(0, T, block):
        i1 = min(i0 + block, T)
        e = i1 + Tk - T  # keys visible to the block's last row
        att = (q[:, :, i0:i1] @ kr[:, :, :e].swapaxes(-1, -2)) * scale  # (B, H, i1-i0, e)
        att = xp.where(causal_mask(i1 - i0, e, xp), -xp.inf, att)  # the block's diagonal
        p, p_cache = softmax_forward(att, axis=-1)  # (B, H, i1-i0, e)
        pd, drop_cache = dropout_forward(p, dropout, rng)  # (B, H, i1-i0, e)
        out[:, :, i0:i1] = pd @ vr[:, :, :e]  # (B, H, i1-i0, D)
        blocks.append((i0, i1, e, p_cache, drop_cache))
    cache = (q, k, v, blocks, scale)
    return out, cache


def attention_blocked_backward(dout, cache):
    """Gradients of ``attention_blocked_forward``: ``attention_backward`` block by block.

    Shapes:
        dout (B, H, T, D)  ->  dq (B, H, T, D), dk (B, Hk, Tk, D), dv (B, Hk, Tk, D)

    Math (per block; keys and values are shared, so their gradients ACCUMULATE over blocks, and over the G query
    heads of a group at the end, ``sum_groups``):
        dv[:e] += pd^T @ dout[r]
        dp      = dropout_backward(dout[r] @ v[:e]^T)
        datt    = softmax_backward(dp) / sqrt(D)
        dq[r]   = datt @ k[:e]
        dk[:e] += datt^T @ q[r]
    """
    q, k, v, blocks, scale = cache
    check_dout(dout, q.shape)
    dout = dout.astype(q.dtype, copy=False)
    xp = get_xp(q)
    G = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, G), repeat_kv(v, G)  # (B, H, Tk, D) each, as the forward used them
    dq, dk, dv = xp.empty_like(q), xp.zeros_like(k), xp.zeros_like(v)  # every row of dq is written once
    for i0, i1, e, p_cache, drop_cache in blocks:
        (pd,) = dropout_backward(p_cache[0], drop_cache)  # (B, H, i1-i0, e) recomputed: p * mask / (1 - dropout)
        g = dout[:, :, i0:i1]  # (B, H, i1-i0, D)
        dv[:, :, :e] += pd.swapaxes(-1, -2) @ g  # (B, H, e, D)
        (dp,) = dropout_backward(g @ v[:, :, :e].swapaxes(-1, -2), drop_cache)  # (B, H, i1-i0, e)
        (datt,) = softmax_backward(dp, p_cache)  # (B, H, i1-i0, e)
        datt = datt * scale
        dq[:, :, i0:i1] = datt @ k[:, :, :e]  # (B, H, i1-i0, D)
        dk[:, :, :e] += datt.swapaxes(-1, -2) @ q[:, :, i0:i1]  # (B, H, e, D)
    return dq, sum_groups(dk, G), sum_groups(dv, G)  # dk, dv (B, Hk, Tk, D)


def check_inputs(q, k, v, dropout=0.0, rng=None, block=64):
    """Causal attention's inputs (``attention.check_inputs``) and a block of at least one row; returns
    ``(B, H, T, D, Tk)``."""
    shapes = check_attention_inputs(q, k, v, True, dropout, rng)
    if block < 1:
        raise ValueError(f"block must be >= 1; got {block}")
    return shapes
