"""Attention on the GPU: whole CuPy arrays, the scale, causal mask and softmax in one CUDA pass
(``softmax.scaled_causal_softmax_forward``) and the softmax backward fused (``softmax.softmax_backward``).
References: ``scratchllm/ops/attention.py`` and ``attention_blocked.py``; same signatures, return values and
caches. Importing this module does not import cupy."""

from __future__ import annotations

import math

from ...ops.dropout import dropout_backward, dropout_forward
from . import softmax as fused  # the CUDA softmax kernels (looked up at each call: tests may spy on them)
from ._common import cupy


def attention_forward(q, k, v, causal=True, dropout=0.0, rng=None):
    """``ops.attention_forward`` on the GPU (checked by the dispatch)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    att = q @ k.swapaxes(-1, -2)  # (B, H, T, Tk)
    p, p_cache = fused.scaled_causal_softmax_forward(att, scale, causal)  # (B, H, T, Tk)
    pd, drop_cache = dropout_forward(p, dropout, rng)  # (B, H, T, Tk)
    return pd @ v, (q, k, v, p_cache, drop_cache, scale)


def attention_backward(dout, cache):
    """``ops.attention_backward`` on the GPU: ``dq, dk, dv``."""
    q, k, v, p_cache, drop_cache, scale = cache
    dout = dout.astype(q.dtype, copy=False)
    (pd,) = dropout_backward(p_cache[0], drop_cache)  # (B, H, T, Tk)
    dv = pd.swapaxes(-1, -2) @ dout  # (B, H, Tk, D)
    (dp,) = dropout_backward(dout @ v.swapaxes(-1, -2), drop_cache)  # (B, H, T, Tk)
    (datt,) = fused.softmax_backward(dp, p_cache)  # (B, H, T, Tk)
    datt = datt * scale
    return datt @ k, datt.swapaxes(-1, -2) @ q, dv


def attention_blocked_forward(q, k, v, dropout=0.0, rng=None, block=64):
    """``ops.attention_blocked_forward`` on the GPU (checked by the dispatch)."""
    cp = cupy()  # only ever called with CuPy arrays
    B, H, T, D = q.shape
    Tk = k.shape[2]
    scale = 1.0 / math.sqrt(D)
    q, k, v = (cp.ascontiguousarray(a) for a in (q, k, v))  # contiguous copies, kept for the backward
    out = cp.empty((B, H, T, D), dtype=q.dtype)
    blocks = []
    for i0 in range(0, T, block):
        i1 = min(i0 + block, T)
        e = i1 + Tk - T  # keys visible to the block's last row
        att = q[:, :, i0:i1] @ k[:, :, :e].swapaxes(-1, -2)  # (B, H, i1-i0, e)
        p, p_cache = fused.scaled_causal_softmax_forward(att, scale)
        pd, drop_cache = dropout_forward(p, dropout, rng)  # the whole mask: draws in order
        out[:, :, i0:i1] = pd @ v[:, :, :e]
        blocks.append((i0, i1, e, p_cache, drop_cache))
    return out, (q, k, v, blocks, scale)


def attention_blocked_backward(dout, cache, out=None):
    """``ops.attention_blocked_backward`` on the GPU, into ``out`` (dq, dk, dv) when given."""
    cp = cupy()
    q, k, v, blocks, scale = cache
    dout = dout.astype(q.dtype, copy=False)
    if out is None:
        dq, dk, dv = cp.empty_like(q), cp.zeros_like(k), cp.zeros_like(v)
    else:
        dq, dk, dv = out
        dk[...] = 0
        dv[...] = 0
    for i0, i1, e, p_cache, drop_cache in blocks:
        (pd,) = dropout_backward(p_cache[0], drop_cache)  # (B, H, i1-i0, e)
        g = dout[:, :, i0:i1]  # (B, H, i1-i0, D)
        dv[:, :, :e] += pd.swapaxes(-1, -2) @ g
        (dp,) = dropout_backward(g @ v[:, :, :e].swapaxes(-1, -2), drop_cache)
        (datt,) = fused.softmax_backward(dp, p_cache)
        datt = datt * scale
        dq[:, :, i0:i1] = datt @ k[:, :, :e]
        dk[:, :, :e] += datt.swapaxes(-1, -2) @ q[:, :, i0:i1]
    return dq, dk, dv
