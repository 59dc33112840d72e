"""Scaled dot-product attention over heads, causal or not: ``softmax(q k^T / sqrt(D)) v``.

The textbook: the whole T x Tk score matrix, the way the formula reads, and the backward as the forward in
reverse. Grouped-query attention (Llama, Mistral): k and v may have fewer heads Hk than q's H (Hk divides H);
the G = H / Hk query heads of a group share one key/value head (``repeat_kv``), so in the backward that head's
gradient is the SUM of its G query heads' (``sum_groups``). Faster ways to compute the same numbers (the (batch,
head) matrices in pieces on every thread with MKL's GEMM and a fused scale-mask-softmax, or one CUDA pass) are
registered implementations in ``scratchllm/kernels/``; ``attention_blocked.py`` is the same attention computed in query blocks.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_xp
from ._checks import check_dout, check_float, check_same_dtype
from .dropout import dropout_backward, dropout_forward
from .softmax import softmax_backward, softmax_forward


def attention_forward(q, k, v, causal=True, dropout=0.0, rng=None):
    """Multi-head scaled dot-product attention, with optional dropout on the attention weights.

    Shapes:
        q (B, H, T, D), k (B, Hk, Tk, D), v (B, Hk, Tk, D)  ->  out (B, H, T, D)
        (Tk = T for self-attention; Tk > T when the queries are the last T of Tk positions; Hk = H is
        multi-head attention, Hk < H dividing H grouped-query attention, Hk = 1 multi-query)

    Math (k, v first repeated to H heads: query head h reads key/value head h // G, G = H / Hk):
        att = q @ k^T / sqrt(D)                     (B, H, T, Tk)
        att[..., i, j] = -inf where j is in the future of i   (causal only)
        p   = softmax(att, axis=-1)
        pd  = dropout(p, dropout, rng)              (the identity when dropout = 0)
        out = pd @ v
    Masked scores are replaced, not added to: a NaN or inf score of a key in a query's future then cannot
    reach that query's row (NaN + -inf is NaN), as in torch.
    """
    B, H, T, D, Tk = check_inputs(q, k, v, causal, dropout, rng)
    xp = get_xp(q, k, v)
    scale = 1.0 / math.sqrt(D)  # a Python float: keeps float32 inputs float32
    G = H // k.shape[1]  # query heads per key/value head
    kr, vr = repeat_kv(k, G), repeat_kv(v, G)  # (B, H, Tk, D) each
    att = (q @ kr.swapaxes(-1, -2)) * scale  # (B, H, T, Tk)
    if causal:
        att = xp.where(causal_mask(T, Tk, xp), -xp.inf, att)  # (B, H, T, Tk)
    p, p_cache = softmax_forward(att, axis=-1)  # (B, H, T, Tk); masked entries are exactly 0
    pd, drop_cache = dropout_forward(p, dropout, rng)  # (B, H, T, Tk)
    out = pd @ vr  # (B, H, T, D)
    cache = (q, k, v, p_cache, drop_cache, scale)  # pd is not kept: backward rebuilds it from p and the mask
    return out, cache


def attention_backward(dout, cache):
    """Gradients of ``attention_forward``.

    Shapes:
        dout (B, H, T, D)  ->  dq (B, H, T, D), dk (B, Hk, Tk, D), dv (B, Hk, Tk, D)

    Math (the forward in reverse, with k and v repeated to H heads as there):
        dv   = pd^T @ dout
        dpd  = dout @ v^T
        dp   = dropout_backward(dpd)                (the same mask and scale; dp = dpd without dropout)
        datt = p * (dp - sum(dp * p, axis=-1))     (softmax backward; 0 wherever p is 0, so masked
                                                    entries get no gradient and never NaN)
        dq   = datt @ k / sqrt(D)
        dk   = datt^T @ q / sqrt(D)
        dk, dv summed over each group's G query heads (grouped-query: the head was used G times)
    """
    q, k, v, p_cache, drop_cache, scale = cache
    check_dout(dout, q.shape)
    G = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, G), repeat_kv(v, G)  # (B, H, Tk, D) each, as the forward used them
    dout = dout.astype(q.dtype, copy=False)
    (pd,) = dropout_backward(p_cache[0], drop_cache)  # (B, H, T, Tk) recomputed: p * mask / (1 - dropout)
    dv = pd.swapaxes(-1, -2) @ dout  # (B, H, Tk, D)
    dpd = dout @ v.swapaxes(-1, -2)  # (B, H, T, Tk)
    (dp,) = dropout_backward(dpd, drop_cache)  # (B, H, T, Tk)
    (datt,) = softmax_backward(dp, p_cache)  # (B, H, T, Tk)
    datt = datt * scale  # (B, H, T, Tk); the scale of att = q k^T * scale
    dq = datt @ k  # (B, H, T, D)
    dk = datt.swapaxes(-1, -2) @ q  # (B, H, Tk, D)
    return dq, sum_groups(dk, G), sum_groups(dv, G)  # dk, dv (B, Hk, Tk, D)


def repeat_kv(k, G):
    """(B, Hk, Tk, D) -> (B, Hk * G, Tk, D): each key/value head repeated for the G query heads of its group (head
    h reads head h // G), as Hugging Face's ``repeat_kv``. G = 1 (multi-head) returns ``k`` itself."""
    return k if G == 1 else get_xp(k).repeat(k, G, axis=1)


def sum_groups(dk, G):
    """``repeat_kv`` in reverse: (B, Hk * G, Tk, D) -> (B, Hk, Tk, D), each shared head's gradient the sum over the
    G query heads that read it (a value used G times gets the sum of its G gradients)."""
    if G == 1:
        return dk
    B, H, Tk, D = dk.shape
    return dk.reshape(B, H // G, G, Tk, D).sum(axis=2)


def causal_mask(Tq, Tk, xp=np):
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
    Hk, Tk = k.shape[1], k.shape[2]
    if k.shape != (B, Hk, Tk, D) or v.shape != k.shape or H % Hk:
        raise ValueError(f"k and v must have shape (B, Hk, Tk, D) = ({B}, Hk, Tk, {D}) with Hk dividing H={H}; "
                         f"got k {k.shape}, v {v.shape}")
    if causal and Tk < T:
        raise ValueError(f"causal attention needs at least as many keys as queries; got T={T} queries, Tk={Tk} keys")
    return B, H, T, D, Tk


def check_inputs(q, k, v, causal=True, dropout=0.0, rng=None):
    """q, k, v as ``check_qkv`` wants them, and a dropout the dropout op takes: else an error naming it.
    Returns ``(B, H, T, D, Tk)``."""
    shapes = check_qkv(q, k, v, causal)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
    if dropout and rng is None:
        raise ValueError("rng must be a numpy.random.Generator, an int seed or a list of Generators (one per row) "
                         "when dropout > 0")
    return shapes
