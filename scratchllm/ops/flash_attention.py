"""Attention in tiles with an online softmax (FlashAttention): the numbers of ``attention_forward``, in O(T) memory.

``attention_forward`` keeps the (T, Tk) probability matrix for its backward: at T = 4096 that is 64 MiB per
(batch, head) in float32. Here the queries go in tiles of ``block_q`` rows and, for each, the keys in tiles of
``block_k``; a query tile keeps a running max ``m``, a running sum ``l`` and a partial output ``acc``, rescaled as
each key tile arrives, so no more than one (block_q, block_k) tile of scores exists at a time. The cache keeps q,
k, v, the output and one log-sum-exp per query row (and causal and the tile sizes asked for: a faster
implementation may run other tiles, which change only the rounding); the backward recomputes each tile's
probabilities from it
(Dao et al., "FlashAttention", 2022; the loop order of FlashAttention-2, 2023). Causal tiles wholly above the
diagonal are skipped.

The textbook, tile by tile as the Math reads, in ``xp`` (NumPy or CuPy), every (batch, head) at once.
"""

from __future__ import annotations

import math
import numbers

from ..backend import get_xp
from ._checks import check_dout
from .attention import check_qkv, repeat_kv, sum_groups


def flash_attention_forward(q, k, v, causal=True, block_q=64, block_k=64):
    """Scaled dot-product attention, ``softmax(q k^T / sqrt(D)) v``, one tile of scores at a time.

    Shapes:
        q (B, H, T, D), k (B, Hk, Tk, D), v (B, Hk, Tk, D)  ->  out (B, H, T, D)
        (causal: Tk >= T, the queries being the last T of the Tk positions; Hk dividing H: grouped-query, k and v
        repeated to H heads first; both as in ``attention_forward``)

    Math, for the query rows r of one tile and the key columns c of each key tile in turn (s = 1/sqrt(D)):
        S[r, c]  = s q_r . k_c                     (-inf where c is in r's future, causal only)
        m'[r]    = max(m[r], max_c S[r, c])
        P[r, c]  = exp(S[r, c] - m'[r])
        l[r]     = exp(m[r] - m'[r]) l[r] + sum_c P[r, c]
        acc[r]   = exp(m[r] - m'[r]) acc[r] + sum_c P[r, c] v_c
        m[r]     = m'[r]
    starting from m = -inf, l = 0, acc = 0. Why the rescaling is exact: after any number of key tiles,
        l[r] = sum over the keys seen of exp(S[r, c] - m[r]),   acc[r] = sum of exp(S[r, c] - m[r]) v_c,
    and when the max moves from m to m', every term exp(S - m) becomes exp(S - m') = exp(S - m) exp(m - m'):
    one factor for the whole sum. After the last tile
        out[r] = acc[r] / l[r]                     (= sum_c softmax(S[r])_c v_c, the max cancels)
        lse[r] = m[r] + log(l[r])                  (= log sum_c exp(S[r, c]): the cache's one number per row)
    Key tile 0 holds a visible key for every query (key 0; causal needs Tk >= T), so m is finite from the first
    tile on: a row whose m were still -inf would rescale by exp(-inf - -inf) = NaN. A later tile in which a
    row sees nothing adds exp(-inf) = 0 to it. The running max is what keeps exp from overflowing: without it
    (m = 0 throughout) the Math above is just as exact, but exp(S) overflows for scores above 88 in float32.
    """
    B, H, T, D, Tk = check_inputs(q, k, v, causal, block_q, block_k)
    xp = get_xp(q, k, v)
    scale = 1.0 / math.sqrt(D)
    offset = Tk - T  # query i sits at position i + offset and sees keys j <= i + offset
    G = H // k.shape[1]  # query heads per key/value head
    kr, vr = repeat_kv(k, G), repeat_kv(v, G)  # (B, H, Tk, D) each
    out = xp.empty((B, H, T, D), dtype=q.dtype)  # (B, H, T, D)
    lse = xp.empty((B, H, T), dtype=q.dtype)  # (B, H, T)
    for i0 in range(0, T, block_q):
        i1 = min(i0 + block_q, T)
        qi = q[:, :, i0:i1]  # (B, H, bq, D)
        m = xp.full((B, H, i1 - i0, 1), -xp.inf, dtype=q.dtype)  # (B, H, bq, 1) running max
        l = xp.zeros((B, H, i1 - i0, 1), dtype=q.dtype)  # (B, H, bq, 1) running sum of exp(S - m)
        acc = xp.zeros((B, H, i1 - i0, D), dtype=q.dtype)  # (B, H, bq, D) running sum of exp(S - m) v
        for j0, j1 in key_tiles(i0, i1, Tk, block_k, causal, offset):
            S = (qi @ kr[:, :, j0:j1].swapaxes(-1, -2)) * scale  # (B, H, bq, bk)
            if causal and j1 - 1 > i0 + offset:  # the tile crosses the diagonal
                S = xp.where(tile_mask(i0, i1, j0, j1, offset, xp), -xp.inf, S)
            m_new = xp.maximum(m, S.max(axis=-1, keepdims=True))  # (B, H, bq, 1)
            P = xp.exp(S - m_new)  # (B, H, bq, bk); masked entries exp(-inf) = 0
            rescale = xp.exp(m - m_new)  # (B, H, bq, 1); 0 on the first tile (m = -inf)
            l = rescale * l + P.sum(axis=-1, keepdims=True)
            acc = rescale * acc + P @ vr[:, :, j0:j1]  # (B, H, bq, D)
            m = m_new
        out[:, :, i0:i1] = acc / l  # (B, H, bq, D)
        lse[:, :, i0:i1] = (m + xp.log(l))[..., 0]  # (B, H, bq)
    cache = (q, k, v, out, lse, causal, block_q, block_k)  # O(T): no (T, Tk) matrix is kept
    return out, cache


def flash_attention_backward(dout, cache):
    """Gradients of ``flash_attention_forward``, tile by tile, the probabilities recomputed from the cache.

    Shapes:
        dout (B, H, T, D)  ->  dq (B, H, T, D), dk (B, Hk, Tk, D), dv (B, Hk, Tk, D)

    Math, per (query tile, key tile) that the forward visited (k, v repeated to H heads as there; dk, dv summed over
    each group's G query heads at the end):
        P[r, c]   = exp(S[r, c] - lse[r])          (S recomputed as in the forward: the exact softmax)
        dv_c     += sum_r P[r, c] dout_r
        dP[r, c]  = dout_r . v_c
        dS[r, c]  = P[r, c] (dP[r, c] - Dr[r])     (softmax's backward, row r)
        dq_r     += s sum_c dS[r, c] k_c
        dk_c     += s sum_r dS[r, c] q_r
    with Dr[r] = sum_c P[r, c] dP[r, c], the softmax backward's row sum over ALL of row r's keys, which no
    single tile sees. It needs no pass over the keys:
        Dr[r] = sum_c P[r, c] (dout_r . v_c) = dout_r . (sum_c P[r, c] v_c) = dout_r . out_r
    so it is one row sum of dout * out, computed before the tiles.
    """
    q, k, v, out, lse, causal, block_q, block_k = cache
    check_dout(dout, q.shape)
    dout = dout.astype(q.dtype, copy=False)
    xp = get_xp(q)
    B, H, T, D = q.shape
    Tk = k.shape[2]
    scale = 1.0 / math.sqrt(D)
    offset = Tk - T
    G = H // k.shape[1]
    k, v = repeat_kv(k, G), repeat_kv(v, G)  # (B, H, Tk, D) each, as the forward used them
    Dr = (dout * out).sum(axis=-1, keepdims=True)  # (B, H, T, 1) = rowsum(dP * P)
    dq, dk, dv = xp.zeros_like(q), xp.zeros_like(k), xp.zeros_like(v)
    for i0 in range(0, T, block_q):
        i1 = min(i0 + block_q, T)
        qi, gi = q[:, :, i0:i1], dout[:, :, i0:i1]  # (B, H, bq, D)
        for j0, j1 in key_tiles(i0, i1, Tk, block_k, causal, offset):
            kj, vj = k[:, :, j0:j1], v[:, :, j0:j1]  # (B, H, bk, D)
            S = (qi @ kj.swapaxes(-1, -2)) * scale  # (B, H, bq, bk)
            if causal and j1 - 1 > i0 + offset:
                S = xp.where(tile_mask(i0, i1, j0, j1, offset, xp), -xp.inf, S)
            P = xp.exp(S - lse[:, :, i0:i1, None])  # (B, H, bq, bk) the softmax, recomputed
            dv[:, :, j0:j1] += P.swapaxes(-1, -2) @ gi  # (B, H, bk, D)
            dP = gi @ vj.swapaxes(-1, -2)  # (B, H, bq, bk)
            dS = P * (dP - Dr[:, :, i0:i1])  # (B, H, bq, bk)
            dq[:, :, i0:i1] += (dS @ kj) * scale  # (B, H, bq, D)
            dk[:, :, j0:j1] += (dS.swapaxes(-1, -2) @ qi) * scale  # (B, H, bk, D)
    return dq, sum_groups(dk, G), sum_groups(dv, G)  # dk, dv (B, Hk, Tk, D)


def key_tiles(i0, i1, Tk, block_k, causal, offset):
    """The (j0, j1) key tiles that query rows i0 .. i1-1 see: all of them, or (causal) those not wholly above the
    diagonal, i.e. starting at a key the tile's last query may see (j0 <= i1 - 1 + offset)."""
    last = Tk if not causal else min(Tk, i1 + offset)  # one past the last key any row of the tile sees
    return [(j0, min(j0 + block_k, Tk)) for j0 in range(0, last, block_k)]


def tile_mask(i0, i1, j0, j1, offset, xp):
    """Boolean (i1 - i0, j1 - j0), True where key j is in the future of query i (j > i + offset)."""
    i = xp.arange(i0, i1)[:, None] + offset  # (bq, 1)
    j = xp.arange(j0, j1)[None, :]  # (1, bk)
    return j > i


def check_inputs(q, k, v, causal=True, block_q=64, block_k=64):
    """q, k, v as ``attention`` takes them, and tiles of at least one row: else an error naming the argument.
    Returns ``(B, H, T, D, Tk)``."""
    shapes = check_qkv(q, k, v, causal)
    for name, b in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 1:
            raise ValueError(f"{name} must be an int >= 1; got {b!r}")
    return shapes
