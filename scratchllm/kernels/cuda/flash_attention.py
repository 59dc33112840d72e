"""Flash attention as CUDA kernels. Reference: ``scratchllm/ops/flash_attention.py`` (same signatures, numbers up to
rounding, and cache: ``q, k, v, out, lse, causal, block_q, block_k``).

Launch configuration (all three kernels): one thread block per tile of ``FA_ROWS`` rows of one (batch, head), one
thread per row; the other side's rows pass through shared memory in tiles of ``FA_TILE``, loaded by the whole
block, read by every thread. Head size D up to ``FA_MAX_D``. The tile sizes are the kernels' own (``block_q`` and
``block_k`` are kept in the cache for the other implementations; tiles change the numbers only by rounding).

    flash_forward       block (query tile, bh): each thread keeps its query row, the running max m, sum l and
                        output acc (D), and folds in the visible keys one at a time (the online softmax); writes
                        out = acc / l and lse = m + log(l).
    flash_backward_dq   block (query tile, bh): P = exp(s - lse) recomputed, dS = P (dout . v - Dr),
                        dq = scale sum dS k over the row's keys.
    flash_backward_dkdv block (key tile, bh): each thread one key row; the queries that see it pass through
                        shared memory with their dout, lse and Dr: dv = sum P dout, dk = scale sum dS q.
Dr = rowsum(dout * out) is one CuPy reduction before the kernels. No atomics: each gradient row is one thread's
sum, in a fixed order (deterministic).
"""

from __future__ import annotations

import math

import numpy as np

from ._common import PREAMBLE, check_dtype, cupy, instantiations, kernel

FA_ROWS = 64  # rows (threads) per block
FA_TILE = 16  # rows of the other side per shared-memory tile (double: 2 x 16 x 128 x 8 = 32 KB)
FA_MAX_D = 128

CUDA_SOURCE = PREAMBLE + r"""
#define FA_ROWS 64
#define FA_TILE 16
#define FA_MAX_D 128

// One key folded into a row's online softmax: m the max so far, l = sum exp(s - m), acc = sum exp(s - m) v.
// A NaN score becomes the max and stays (no comparison with NaN wins), so the row is NaN, as NumPy's.
template <typename T>
__device__ __forceinline__ void fold(T& m, T& l, T* acc, T s, const T* vrow, int D) {
    const T m_new = (s > m || s != s) ? s : m;
    const T r = sl_exp(m - m_new);  // 1 when the max stays; 0 on the first key (m = -inf)
    const T p = sl_exp(s - m_new);
    l = l * r + p;
    for (int d = 0; d < D; ++d) acc[d] = acc[d] * r + p * vrow[d];
    m = m_new;
}

// The keys a query block needs: kend, one past the last key any of its rows sees, and visible, one past the last
// key row i sees (query i sits at position i + Tk - Tq: causal, it sees keys j <= i + Tk - Tq; else all Tk).
__device__ __forceinline__ void key_range(int i, int Tq, int Tk, int causal, int& kend, int& visible) {
    const int last = min((int)(blockIdx.x + 1) * FA_ROWS, Tq) - 1, offset = Tk - Tq;  // the block's last row
    kend = causal ? min(Tk, last + offset + 1) : Tk;
    visible = causal ? i + offset + 1 : Tk;
}

// rows [row0, row0 + n) of a (rows, D) matrix into a shared tile
template <typename T>
__device__ __forceinline__ void stage(T (*tile)[FA_MAX_D], const T* src, int row0, int n, int D) {
    for (int e = threadIdx.x; e < n * D; e += blockDim.x) tile[e / D][e % D] = src[(long long)(row0 + e / D) * D + e % D];
}

// Forward, a thread per query row i (key_range: the keys it sees).
template <typename T>
__global__ void flash_forward(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                              T* __restrict__ out, T* __restrict__ lse, int Tq, int Tk, int D, T scale, int causal) {
    __shared__ T ks[FA_TILE][FA_MAX_D];
    __shared__ T vs[FA_TILE][FA_MAX_D];
    const long long bh = blockIdx.y;
    const int i = blockIdx.x * FA_ROWS + threadIdx.x;
    const bool live = i < Tq;
    int kend, visible;
    key_range(i, Tq, Tk, causal, kend, visible);
    T qv[FA_MAX_D], acc[FA_MAX_D], m = neg_inf<T>(), l = 0;
    for (int d = 0; d < D; ++d) {
        qv[d] = live ? q[(bh * Tq + i) * D + d] : T(0);
        acc[d] = 0;
    }
    for (int j0 = 0; j0 < kend; j0 += FA_TILE) {
        const int n = min(FA_TILE, kend - j0);
        stage(ks, k + bh * Tk * D, j0, n, D);
        stage(vs, v + bh * Tk * D, j0, n, D);
        __syncthreads();
        for (int c = 0; live && c < n && j0 + c < visible; ++c) {
            T s = 0;
            for (int d = 0; d < D; ++d) s += qv[d] * ks[c][d];
            fold(m, l, acc, s * scale, vs[c], D);
        }
        __syncthreads();  // before the next tile overwrites ks, vs
    }
    if (!live) return;
    for (int d = 0; d < D; ++d) out[(bh * Tq + i) * D + d] = acc[d] / l;
    lse[bh * Tq + i] = m + sl_log(l);
}

// dq for query row i: sum over its visible keys c of dS = P (dP - Dr), P = exp(s - lse), dP = dout_i . v_c.
template <typename T>
__global__ void flash_backward_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                  const T* __restrict__ dout, const T* __restrict__ lse, const T* __restrict__ Dr,
                                  T* __restrict__ dq, int Tq, int Tk, int D, T scale, int causal) {
    __shared__ T ks[FA_TILE][FA_MAX_D];
    __shared__ T vs[FA_TILE][FA_MAX_D];
    const long long bh = blockIdx.y;
    const int i = blockIdx.x * FA_ROWS + threadIdx.x;
    const bool live = i < Tq;
    int kend, visible;
    key_range(i, Tq, Tk, causal, kend, visible);
    T qv[FA_MAX_D], gv[FA_MAX_D], dqa[FA_MAX_D];
    for (int d = 0; d < D; ++d) {
        qv[d] = live ? q[(bh * Tq + i) * D + d] : T(0);
        gv[d] = live ? dout[(bh * Tq + i) * D + d] : T(0);
        dqa[d] = 0;
    }
    const T L = live ? lse[bh * Tq + i] : T(0), Di = live ? Dr[bh * Tq + i] : T(0);
    for (int j0 = 0; j0 < kend; j0 += FA_TILE) {
        const int n = min(FA_TILE, kend - j0);
        stage(ks, k + bh * Tk * D, j0, n, D);
        stage(vs, v + bh * Tk * D, j0, n, D);
        __syncthreads();
        for (int c = 0; live && c < n && j0 + c < visible; ++c) {
            T s = 0, dp = 0;
            for (int d = 0; d < D; ++d) {
                s += qv[d] * ks[c][d];
                dp += gv[d] * vs[c][d];
            }
            const T ds = sl_exp(s * scale - L) * (dp - Di);
            for (int d = 0; d < D; ++d) dqa[d] += ds * ks[c][d];
        }
        __syncthreads();
    }
    if (!live) return;
    for (int d = 0; d < D; ++d) dq[(bh * Tq + i) * D + d] = dqa[d] * scale;
}

// dk, dv for key row c: sums over the queries that see it (i + Tk - Tq >= c when causal).
template <typename T>
__global__ void flash_backward_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                    const T* __restrict__ dout, const T* __restrict__ lse, const T* __restrict__ Dr,
                                    T* __restrict__ dk, T* __restrict__ dv, int Tq, int Tk, int D, T scale,
                                    int causal) {
    __shared__ T qs[FA_TILE][FA_MAX_D];
    __shared__ T gs[FA_TILE][FA_MAX_D];
    __shared__ T ls[FA_TILE];
    __shared__ T ds_[FA_TILE];
    const long long bh = blockIdx.y;
    const int c = blockIdx.x * FA_ROWS + threadIdx.x, offset = Tk - Tq;
    const bool live = c < Tk;
    const int first = causal ? max(0, (int)(blockIdx.x * FA_ROWS) - offset) : 0;  // the first query that sees a key here
    T kv[FA_MAX_D], vv[FA_MAX_D], dka[FA_MAX_D], dva[FA_MAX_D];
    for (int d = 0; d < D; ++d) {
        kv[d] = live ? k[(bh * Tk + c) * D + d] : T(0);
        vv[d] = live ? v[(bh * Tk + c) * D + d] : T(0);
        dka[d] = 0;
        dva[d] = 0;
    }
    for (int i0 = first; i0 < Tq; i0 += FA_TILE) {
        const int n = min(FA_TILE, Tq - i0);
        stage(qs, q + bh * Tq * D, i0, n, D);
        stage(gs, dout + bh * Tq * D, i0, n, D);
        for (int r = threadIdx.x; r < n; r += blockDim.x) {
            ls[r] = lse[bh * Tq + i0 + r];
            ds_[r] = Dr[bh * Tq + i0 + r];
        }
        __syncthreads();
        for (int r = 0; live && r < n; ++r) {
            if (causal && i0 + r + offset < c) continue;  // query i0 + r does not see key c
            T s = 0, dp = 0;
            for (int d = 0; d < D; ++d) {
                s += qs[r][d] * kv[d];
                dp += gs[r][d] * vv[d];
            }
            const T p = sl_exp(s * scale - ls[r]);
            const T dsc = p * (dp - ds_[r]);
            for (int d = 0; d < D; ++d) {
                dva[d] += p * gs[r][d];
                dka[d] += dsc * qs[r][d];
            }
        }
        __syncthreads();
    }
    if (!live) return;
    for (int d = 0; d < D; ++d) {
        dk[(bh * Tk + c) * D + d] = dka[d] * scale;
        dv[(bh * Tk + c) * D + d] = dva[d];
    }
}
"""

KERNELS = ("flash_forward", "flash_backward_dq", "flash_backward_dkdv")
NAME_EXPRESSIONS = instantiations(*KERNELS)


def _k(name, dtype):
    return kernel(CUDA_SOURCE, NAME_EXPRESSIONS, name, dtype)


def _sizes(q, k):
    B, H, T, D = q.shape
    return B, H, T, D, k.shape[2], q.dtype.type(1.0 / math.sqrt(D))


def flash_attention_forward(q, k, v, causal=True, block_q=64, block_k=64):
    """``ops.flash_attention_forward`` on the GPU (checked by the dispatch; D <= FA_MAX_D)."""
    cp = cupy()
    check_dtype(q)
    B, H, T, D, Tk, scale = _sizes(q, k)
    q, k, v = (cp.ascontiguousarray(a) for a in (q, k, v))  # (B, H, T or Tk, D), kept for the backward
    out = cp.empty_like(q)
    lse = cp.empty((B, H, T), dtype=q.dtype)
    grid = ((T + FA_ROWS - 1) // FA_ROWS, B * H)
    _k("flash_forward", q.dtype)(grid, (FA_ROWS,), (q, k, v, out, lse, np.int32(T), np.int32(Tk), np.int32(D), scale,
                                                    np.int32(bool(causal))))
    return out, (q, k, v, out, lse, causal, block_q, block_k)


def flash_attention_backward(dout, cache):
    """``ops.flash_attention_backward`` on the GPU: ``dq, dk, dv``."""
    cp = cupy()
    q, k, v, out, lse, causal, _, _ = cache
    q, k, v, out = (cp.ascontiguousarray(a) for a in (q, k, v, out))
    dout = cp.ascontiguousarray(dout.astype(q.dtype, copy=False))
    B, H, T, D, Tk, scale = _sizes(q, k)
    Dr = cp.ascontiguousarray((dout * out).sum(axis=-1))  # (B, H, T) rowsum(dP * P) = dout . out
    lse = cp.ascontiguousarray(lse)
    dq, dk, dv = cp.empty_like(q), cp.empty_like(k), cp.empty_like(v)
    sizes = (np.int32(T), np.int32(Tk), np.int32(D), scale, np.int32(bool(causal)))
    _k("flash_backward_dq", q.dtype)(((T + FA_ROWS - 1) // FA_ROWS, B * H), (FA_ROWS,),
                                     (q, k, v, dout, lse, Dr, dq, *sizes))
    _k("flash_backward_dkdv", q.dtype)(((Tk + FA_ROWS - 1) // FA_ROWS, B * H), (FA_ROWS,),
                                       (q, k, v, dout, lse, Dr, dk, dv, *sizes))
    return dq, dk, dv
