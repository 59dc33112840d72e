"""Flash attention on the CPU: the (batch, head) pairs dealt to the CPU threads (one contiguous run each), every
tile's products through ``blas.matmul`` into buffers made once per thread (MKL's sequential GEMM on a core that
works alone, the output accumulated in place: beta = 1), the scale, mask, max, exp and sums in place on the
tile. Reference: ``scratchllm/ops/flash_attention.py``; same signature, numbers up to rounding, and cache.

Tiles of at least ``MIN_TILE`` queries and keys: smaller ones cost more in NumPy's per-call overhead than they
save (GPT-2 small's attention, B1 H12 T1024 D64 float32, forward + backward on 2 threads: 107 ms with 64 x 64
tiles, 60 ms with 128 x 128, torch's SDPA 67 ms); from ``BIG_TILE_T`` keys, ``BIG_TILE`` (one thread, B1 H4 T4096
D64: 507 ms with 256 x 256 against 616 with 128 x 128; benchmarks/flash_memory.py on 2 threads, 247 against 372). A tile's size changes the numbers only by rounding: the
softmax is exact whatever the tiling, and the backward recomputes it from the log-sum-exp.
"""

from __future__ import annotations

import math

import numpy as np

from ..blas import matmul
from ..threads import cpu_threads, parallel_map, shard_bounds
from ...ops.flash_attention import key_tiles, tile_mask


MIN_TILE = 128
BIG_TILE, BIG_TILE_T = 256, 2048


def _tiles(block_q, block_k, Tk):
    """The tiles this implementation runs: at least MIN_TILE, BIG_TILE from BIG_TILE_T keys (the module
    docstring has the measurements)."""
    least = BIG_TILE if Tk >= BIG_TILE_T else MIN_TILE
    return max(block_q, least), max(block_k, least)


def _runs(n):
    """The (batch, head) runs, one per CPU thread."""
    return shard_bounds(n, cpu_threads())


def flash_attention_forward(q, k, v, causal=True, block_q=64, block_k=64):
    """``ops.flash_attention_forward`` on NumPy arrays (checked by the dispatch)."""
    B, H, T, D = q.shape
    Tk = k.shape[2]
    scale = q.dtype.type(1.0 / math.sqrt(D))
    offset = Tk - T
    bq, bk = _tiles(block_q, block_k, Tk)
    q3, k3, v3 = (a.reshape(B * H, -1, D) for a in (q, k, v))  # (BH, T or Tk, D): views when contiguous
    out = np.empty((B * H, T, D), dtype=q.dtype)
    lse = np.empty((B * H, T), dtype=q.dtype)

    def run(r):  # the heads r: every query tile against its key tiles
        n = r.stop - r.start
        S = np.empty((n, bq, bk), dtype=q.dtype)  # one tile of scores, then of probabilities
        for i0 in range(0, T, bq):
            i1 = min(i0 + bq, T)
            qi = q3[r, i0:i1] * scale  # (n, bq, D) scaled once here, not each tile of scores
            m = np.full((n, i1 - i0, 1), -np.inf, dtype=q.dtype)
            m_new, rescale = np.empty_like(m), np.empty_like(m)
            l = np.zeros((n, i1 - i0, 1), dtype=q.dtype)
            acc = out[r, i0:i1]  # (n, bq, D) accumulated in place, divided by l at the end
            acc[...] = 0
            for j0, j1 in key_tiles(i0, i1, Tk, bk, causal, offset):
                s = S[:, :i1 - i0, :j1 - j0]  # (n, bq, bk)
                matmul(qi, k3[r, j0:j1].swapaxes(-1, -2), out=s)  # scaled scores
                if causal and j1 - 1 > i0 + offset:
                    np.copyto(s, -np.inf, where=tile_mask(i0, i1, j0, j1, offset, np))
                np.maximum(m, s.max(axis=-1, keepdims=True), out=m_new)
                s -= m_new
                np.exp(s, out=s)  # P
                np.subtract(m, m_new, out=rescale)
                np.exp(rescale, out=rescale)
                l *= rescale
                l += s.sum(axis=-1, keepdims=True)
                acc *= rescale
                matmul(s, v3[r, j0:j1], out=acc, accumulate=True)  # acc += P @ v
                m, m_new = m_new, m
            acc /= l
            np.log(l, out=l)
            lse[r, i0:i1] = (m + l)[..., 0]

    parallel_map(run, _runs(B * H))
    cache = (q, k, v, out.reshape(B, H, T, D), lse.reshape(B, H, T), causal, block_q, block_k)
    return out.reshape(B, H, T, D), cache


def flash_attention_backward(dout, cache):
    """``ops.flash_attention_backward`` on NumPy arrays (checked by the dispatch): ``dq, dk, dv``."""
    q, k, v, out, lse, causal, block_q, block_k = cache
    dout = dout.astype(q.dtype, copy=False)
    B, H, T, D = q.shape
    Tk = k.shape[2]
    scale = q.dtype.type(1.0 / math.sqrt(D))
    offset = Tk - T
    bq, bk = _tiles(block_q, block_k, Tk)
    q3, k3, v3, g3 = (a.reshape(B * H, -1, D) for a in (q, k, v, dout))
    lse3 = lse.reshape(B * H, T, 1)
    Dr = np.einsum("btd,btd->bt", g3, out.reshape(B * H, T, D))[..., None]  # (BH, T, 1) rowsum(dout * out)
    dq, dk, dv = np.zeros_like(q3), np.zeros_like(k3), np.zeros_like(v3)

    def run(r):
        n = r.stop - r.start
        P = np.empty((n, bq, bk), dtype=q.dtype)
        dS = np.empty((n, bq, bk), dtype=q.dtype)
        for i0 in range(0, T, bq):
            i1 = min(i0 + bq, T)
            qi, gi = q3[r, i0:i1], g3[r, i0:i1]  # (n, bq, D)
            qs = qi * scale
            for j0, j1 in key_tiles(i0, i1, Tk, bk, causal, offset):
                p, ds = P[:, :i1 - i0, :j1 - j0], dS[:, :i1 - i0, :j1 - j0]  # (n, bq, bk)
                kj, vj = k3[r, j0:j1], v3[r, j0:j1]
                matmul(qs, kj.swapaxes(-1, -2), out=p)  # scaled scores
                if causal and j1 - 1 > i0 + offset:
                    np.copyto(p, -np.inf, where=tile_mask(i0, i1, j0, j1, offset, np))
                p -= lse3[r, i0:i1]
                np.exp(p, out=p)  # the softmax, recomputed
                matmul(p.swapaxes(-1, -2), gi, out=dv[r, j0:j1], accumulate=True)  # dv += P^T dout
                matmul(gi, vj.swapaxes(-1, -2), out=ds)  # dP
                ds -= Dr[r, i0:i1]
                ds *= p  # dS = P (dP - Dr)
                matmul(ds, kj, out=dq[r, i0:i1], accumulate=True)  # dq += dS k (times s below, once)
                matmul(ds.swapaxes(-1, -2), qi, out=dk[r, j0:j1], accumulate=True)  # dk += dS^T q (likewise)
            dq[r, i0:i1] *= scale

    parallel_map(run, _runs(B * H))
    dk *= scale
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)
