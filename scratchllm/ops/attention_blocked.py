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


def _runs(r, H):
    """Index pairs (batches, heads) whose 4-D views cover the rows ``r`` of the flattened (B, H) axis, in order:
    runs of whole batch entries together (one matrix product for all their heads), partial entries alone."""
    runs, i = [], r.start
    while i < r.stop:
        b, h = divmod(i, H)
        if h == 0 and r.stop - i >= H:  # whole batch entries
            n = (r.stop - i) // H
            runs.append((slice(b, b + n), slice(0, H)))
            i += n * H
        else:
            h1 = min(H, h + r.stop - i)
            runs.append((slice(b, b + 1), slice(h, h1)))
            i += h1 - h
    return runs


def attention_blocked_forward(q, k, v, dropout=0.0, rng=None, block=64):
    """Causal multi-head attention, query block by query block.

    Shapes:
        q (B, H, T, D), k (B, H, Tk, D), v (B, H, Tk, D), Tk >= T  ->  out (B, H, T, D)

    Math, for the query rows r = i0 .. i1-1 of each block (they see keys 0 .. e-1, e = i1 + Tk - T):
        att = q[r] @ k[:e]^T / sqrt(D), masked above the diagonal       (B, H, i1 - i0, e)
        p   = softmax(att, axis=-1);  pd = dropout(p)
        out[r] = pd @ v[:e]

    On NumPy q, k and v are read where they are (GPT's are strided views of one qkv array: the matrix products
    take any layout, ``blas.matmul``), and ``out`` is a (B, H, T, D) view of a (B, T, H, D) array, its heads side
    by side, which is the layout the output projection reads next.
    """
    B, H, T, D, Tk = check_qkv(q, k, v, causal=True)
    if block < 1:
        raise ValueError(f"block must be >= 1; got {block}")
    xp = get_xp(q, k, v)
    scale = 1.0 / math.sqrt(D)
    BH = B * H  # the (batch, head) matrices are independent: pieces of them run on every CPU thread
    if xp is np:
        out = xp.empty((B, T, H, D), dtype=q.dtype).transpose(0, 2, 1, 3)  # (B, H, T, D) view, heads side by side
    else:  # CuPy: contiguous copies, kept for the backward
        q, k, v = (xp.ascontiguousarray(a) for a in (q, k, v))
        out = xp.empty((B, H, T, D), dtype=q.dtype)  # (B, H, T, D)
    blocks = []
    for i0 in range(0, T, block):
        i1 = min(i0 + block, T)
        e = i1 + Tk - T  # keys visible to the block's last row
        if xp is not np and kernels.enabled():  # scale + mask + softmax: one CUDA pass
            att = q[:, :, i0:i1] @ k[:, :, :e].swapaxes(-1, -2)  # (B, H, i1-i0, e)
            p, p_cache = kernels.scaled_causal_softmax_forward(att, scale)
            pv_done = False
        else:
            p = xp.empty((B, H, i1 - i0, e), dtype=q.dtype)  # (B, H, i1-i0, e)
            mask = causal_mask(i1 - i0, e, xp)  # the block's diagonal

            def weights(r):  # without dropout pd is p: its product with v right away, while in cache
                for bs, hs in _runs(r, H):
                    attention_weights(q[bs, hs, i0:i1], k[bs, hs, :e], scale, mask, p[bs, hs])
                    if not dropout:
                        matmul(p[bs, hs], v[bs, hs, :e], out=out[bs, hs, i0:i1])

            parallel_chunks(weights, BH, p.size, xp)
            p_cache = (p, -1)
            pv_done = not dropout
        pd, drop_cache = dropout_forward(p, dropout, rng)  # (B, H, i1-i0, e) the whole mask: draws in order
        if not pv_done:
            def values(r):  # out = pd @ v
                for bs, hs in _runs(r, H):
                    matmul(pd[bs, hs], v[bs, hs, :e], out=out[bs, hs, i0:i1])

            parallel_chunks(values, BH, pd.size, xp)
        blocks.append((i0, i1, e, p_cache, drop_cache))
    cache = (q, k, v, blocks, scale)
    return out, cache


def attention_blocked_backward(dout, cache, out=None):
    """Gradients of ``attention_blocked_forward``: ``attention_backward`` block by block.

    Shapes:
        dout (B, H, T, D)  ->  dq (B, H, T, D), dk (B, H, Tk, D), dv (B, H, Tk, D)

    ``out``: three arrays of those shapes and q's dtype, of any layout (apart from each other and from dout), to
    write dq, dk, dv into (then returned): GPT passes the three (B, H, T, D) views of the (B, T, 3, H, D) array
    its qkv projection's backward reads, so nothing is copied there afterwards.

    Math (per block; keys and values are shared, so their gradients ACCUMULATE over blocks):
        dv[:e] += pd^T @ dout[r]
        dp      = dropout_backward(dout[r] @ v[:e]^T)
        datt    = softmax_backward(dp) / sqrt(D)
        dq[r]   = datt @ k[:e]
        dk[:e] += datt^T @ q[r]
    """
    q, k, v, blocks, scale = cache
    B, H, T, D = q.shape
    Tk = k.shape[2]
    BH = B * H
    check_dout(dout, (B, H, T, D))
    dout = dout.astype(q.dtype, copy=False)  # (B, H, T, D), read where it is on NumPy (any layout)
    xp = get_xp(q)
    # dq: every row is written once. dk and dv accumulate over the blocks: on the CPU the last block, which sees
    # every key (e = Tk), goes first and writes them (no zeros to write beforehand); the others add to their
    # first e rows
    on_cpu = xp is np and bool(blocks)
    shapes = ((B, H, T, D), (B, H, Tk, D), (B, H, Tk, D))
    if out is None:
        dq, dk, dv = ((xp.empty if on_cpu or j == 0 else xp.zeros)(shape, q.dtype) for j, shape in enumerate(shapes))
    else:
        if len(out) != 3 or any(getattr(o, "shape", None) != shape or getattr(o, "dtype", None) != q.dtype
                                for o, shape in zip(out, shapes)):
            raise ValueError(f"out must be three arrays (dq, dk, dv) of shapes {shapes} and dtype {q.dtype}")
        dq, dk, dv = out
        if not on_cpu:
            dk[...] = 0
            dv[...] = 0
    for n, (i0, i1, e, p_cache, drop_cache) in enumerate(reversed(blocks) if on_cpu else blocks):
        (pd,) = dropout_backward(p_cache[0], drop_cache)  # (B, H, i1-i0, e) recomputed: p * mask / (1 - dropout)
        p = p_cache[0]  # (B, H, i1-i0, e)
        mask, drop_scale, _ = drop_cache
        if xp is not np:  # CuPy: whole arrays (the softmax backward is a fused kernel there)
            g = dout[:, :, i0:i1]  # (B, H, i1-i0, D)
            dv[:, :, :e] += pd.swapaxes(-1, -2) @ g
            (dp,) = dropout_backward(g @ v[:, :, :e].swapaxes(-1, -2), (mask, drop_scale, pd.shape))
            (datt,) = (kernels.softmax_backward if kernels.enabled() else softmax_backward)(dp, p_cache)
            datt = datt * scale
            dq[:, :, i0:i1] = datt @ k[:, :, :e]
            dk[:, :, :e] += datt.swapaxes(-1, -2) @ q[:, :, i0:i1]
            continue

        def matrices(r):
            for bs, hs in _runs(r, H):
                matrices_backward(dout[bs, hs, i0:i1], q[bs, hs, i0:i1], k[bs, hs, :e], v[bs, hs, :e], p[bs, hs],
                                  pd[bs, hs], None if mask is None else mask[bs, hs], drop_scale, scale,
                                  dq[bs, hs, i0:i1], dk[bs, hs, :e], dv[bs, hs, :e], accumulate=n > 0)

        parallel_chunks(matrices, BH, p.size, xp)  # pieces of the (batch, head) matrices on every CPU thread
    return dq, dk, dv
