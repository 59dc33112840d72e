"""Blocked causal attention on the CPU. Reference: ``scratchllm/ops/attention_blocked.py`` (same signature, return
values and cache; the backward also takes ``out=``).

Each block's (batch, head) matrices run in pieces on every CPU thread with ``attention.py``'s per-piece
forward and backward (MKL's GEMM, the fused scale-mask-softmax). q, k, v and dout are read where they lie (GPT's
are strided views of one qkv array: the products take any layout, ``blas.matmul``), ``out`` is a (B, H, T, D)
view of a (B, T, H, D) array, its heads side by side (the layout the output projection reads next), and the
backward writes dq, dk, dv where its caller wants them.
"""

from __future__ import annotations

import math

import numpy as np

from ..blas import matmul
from ...ops.attention import causal_mask
from ...ops.dropout import dropout_backward, dropout_forward
from ..threads import parallel_chunks
from .attention import attention_weights, matrices_backward


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
    """``ops.attention_blocked_forward`` on NumPy arrays (checked by the dispatch): ``out, (q, k, v, blocks,
    scale)``, out a (B, H, T, D) view of a (B, T, H, D) array."""
    B, H, T, D = q.shape
    Tk = k.shape[2]
    scale = 1.0 / math.sqrt(D)
    BH = B * H  # the (batch, head) matrices are independent: pieces of them run on every CPU thread
    out = np.empty((B, T, H, D), dtype=q.dtype).transpose(0, 2, 1, 3)  # (B, H, T, D) view, heads side by side
    blocks = []
    for i0 in range(0, T, block):
        i1 = min(i0 + block, T)
        e = i1 + Tk - T  # keys visible to the block's last row
        p = np.empty((B, H, i1 - i0, e), dtype=q.dtype)  # (B, H, i1-i0, e)
        mask = causal_mask(i1 - i0, e, np)  # the block's diagonal

        def weights(r):  # without dropout pd is p: its product with v right away, while in cache
            for bs, hs in _runs(r, H):
                attention_weights(q[bs, hs, i0:i1], k[bs, hs, :e], scale, mask, p[bs, hs])
                if not dropout:
                    matmul(p[bs, hs], v[bs, hs, :e], out=out[bs, hs, i0:i1])

        parallel_chunks(weights, BH, p.size, np)
        pd, drop_cache = dropout_forward(p, dropout, rng)  # (B, H, i1-i0, e) the whole mask: draws in order
        if dropout:
            def values(r):  # out = pd @ v
                for bs, hs in _runs(r, H):
                    matmul(pd[bs, hs], v[bs, hs, :e], out=out[bs, hs, i0:i1])

            parallel_chunks(values, BH, pd.size, np)
        blocks.append((i0, i1, e, (p, -1), drop_cache))
    cache = (q, k, v, blocks, scale)
    return out, cache


def attention_blocked_backward(dout, cache, out=None):
    """``ops.attention_blocked_backward`` on NumPy arrays: ``dq, dk, dv``.

    ``out``: three arrays (dq, dk, dv) of the gradients' shapes and q's dtype, of any layout (apart from each
    other and from dout; checked by the dispatch), to write the gradients into (then returned): GPT passes the
    three (B, H, T, D) views of the (B, T, 3, H, D) array its qkv projection's backward reads, so nothing is
    copied there afterwards.
    """
    q, k, v, blocks, scale = cache
    B, H, T, D = q.shape
    Tk = k.shape[2]
    BH = B * H
    dout = dout.astype(q.dtype, copy=False)  # (B, H, T, D), read where it is (any layout)
    # dq: every row is written once. dk and dv accumulate over the blocks: the last block, which sees every key
    # (e = Tk), goes first and writes them (no zeros to write beforehand); the others add to their first e rows
    shapes = ((B, H, T, D), (B, H, Tk, D), (B, H, Tk, D))
    dq, dk, dv = (np.empty(shape, q.dtype) for shape in shapes) if out is None else out
    for n, (i0, i1, e, p_cache, drop_cache) in enumerate(reversed(blocks)):
        (pd,) = dropout_backward(p_cache[0], drop_cache)  # (B, H, i1-i0, e) recomputed: p * mask / (1 - dropout)
        p = p_cache[0]  # (B, H, i1-i0, e)
        mask, drop_scale, _ = drop_cache

        def matrices(r):
            for bs, hs in _runs(r, H):
                matrices_backward(dout[bs, hs, i0:i1], q[bs, hs, i0:i1], k[bs, hs, :e], v[bs, hs, :e], p[bs, hs],
                                  pd[bs, hs], None if mask is None else mask[bs, hs], drop_scale, scale,
                                  dq[bs, hs, i0:i1], dk[bs, hs, :e], dv[bs, hs, :e], accumulate=n > 0)

        parallel_chunks(matrices, BH, p.size, np)  # pieces of the (batch, head) matrices on every CPU thread
    return dq, dk, dv
