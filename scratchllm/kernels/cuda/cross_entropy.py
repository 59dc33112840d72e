"""Fused softmax + cross-entropy, forward and backward, as CUDA kernels. Reference:
``scratchllm/ops/cross_entropy.py`` (same signatures, return values and cache).

Forward: one pass over each row of logits computes the max and sum(exp(x - max)) online, then
lse = max + log(sum) and the row's loss lse - x[target] (0 for an ignored row). The mean over the M kept
rows is taken on the device: M = max(number of kept rows, 1) stays a 0-d device array (no host sync), and
it is the cache's last entry, so the backward divides by it on the device too.

Backward: one pass writes dlogits = (exp(x - lse) - onehot(target)) * dout / M for kept rows and 0 for
ignored rows; the softmax is recomputed from the cached lse instead of stored (it is as large as the
logits).

A target outside [0, V) cannot raise on the GPU without a host sync: its row's loss is NaN instead, so the
mean loss is NaN and the trainer's finiteness check stops the run; the cache's ``t_safe`` holds 0 for that row,
as the op's does, so either backward reads column 0 there.

Launch configuration: one 256-thread block per row (V is large: 50257 for GPT-2), threads stride over the
row; warp shuffles then shared memory merge the per-thread (max, sum) pairs. Grid N = prod(...) rows.
"""

from __future__ import annotations

import numpy as np

from ._common import PREAMBLE, ROW_BLOCK, check_dtype, cupy, instantiations, kernel

CUDA_SOURCE = PREAMBLE + r"""
// Forward, one block per row n of V logits:
//   lse[n] = m + log(sum_v exp(x[n, v] - m)),  m = max_v x[n, v]
//   nll[n] = lse[n] - x[n, t[n]] for a kept row (NaN if t[n] is outside [0, V)), 0 for an ignored row
// t: the targets as given (int64); the cache's t_safe (0 for ignored and out-of-range rows) is made apart.
template <typename T>
__global__ void cross_entropy_forward(const T* __restrict__ logits, const long long* __restrict__ t_all,
                                      const bool* __restrict__ keep, T* __restrict__ lse, T* __restrict__ nll,
                                      long long N, int V) {
    const long long row = blockIdx.x;
    const T* xr = logits + row * V;
    T m = neg_inf<T>(), s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) softmax_add(m, s, xr[j]);
    block_softmax_reduce(m, s);
    if (threadIdx.x == 0) {
        const T l = m + sl_log(s);
        lse[row] = l;
        const long long t = t_all[row];
        T loss = 0;
        if (keep[row]) loss = (t >= 0 && t < V) ? l - xr[t] : quiet_nan<T>();
        nll[row] = loss;
    }
}

// Backward, one block per row: dlogits[n, v] = (exp(x[n, v] - lse[n]) - [v == t[n]]) * scale for a kept
// row, 0 for an ignored one. scale points at the 0-d device array dout / M (read on the device: no sync).
template <typename T>
__global__ void cross_entropy_backward(const T* __restrict__ logits, const T* __restrict__ lse,
                                       const long long* __restrict__ t_safe, const bool* __restrict__ keep,
                                       const T* __restrict__ scale, T* __restrict__ dlogits, long long N, int V) {
    const long long row = blockIdx.x;
    T* dr = dlogits + row * V;
    if (!keep[row]) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) dr[j] = T(0);
        return;
    }
    const T* xr = logits + row * V;
    const T l = lse[row];
    const T w = scale[0];
    const long long t = t_safe[row];
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        T p = sl_exp(xr[j] - l);
        if (j == t) p -= T(1);
        dr[j] = p * w;
    }
}
"""

KERNELS = ("cross_entropy_forward", "cross_entropy_backward")
NAME_EXPRESSIONS = instantiations(*KERNELS)


def _k(name, dtype):
    return kernel(CUDA_SOURCE, NAME_EXPRESSIONS, name, dtype)


def cross_entropy_forward(logits, targets, ignore_index=-1):
    """``ops.cross_entropy_forward`` on the GPU: ``loss (0-d), (logits, lse, t_safe, keep, M)``."""
    cp = cupy()
    check_dtype(logits)
    dtype = logits.dtype
    V = logits.shape[-1]
    x = cp.ascontiguousarray(logits).reshape(-1, V)  # (N, V)
    t = targets.reshape(-1)  # (N,)
    keep = t != ignore_index  # (N,)
    t_all = cp.ascontiguousarray(t.astype(cp.int64, copy=False))  # (N,) for the kernel: NaN where out of range
    t_safe = cp.where(keep & (t >= 0) & (t < V), t_all, 0)  # (N,) the op's: ignored and bad rows read column 0
    N = x.shape[0]
    lse = cp.empty(N, dtype=dtype)
    nll = cp.empty(N, dtype=dtype)
    _k("cross_entropy_forward", dtype)((N,), (ROW_BLOCK,), (x, t_all, keep, lse, nll, np.int64(N), np.int32(V)))
    count = cp.maximum(keep.sum(), 1).astype(dtype)  # () M on the device: no host sync
    loss = (nll.sum() / count).astype(dtype)  # ()
    return loss, (logits, lse, t_safe, keep, count)


def cross_entropy_backward(dout, cache):
    """``ops.cross_entropy_backward`` on the GPU: ``(dlogits, None)``."""
    cp = cupy()
    logits, lse, t_safe, keep, count = cache
    dtype = logits.dtype
    V = logits.shape[-1]
    x = cp.ascontiguousarray(logits).reshape(-1, V)
    N = x.shape[0]
    scale = (cp.asarray(dout, dtype=dtype).reshape(()) / count).astype(dtype)  # () dout / M, on the device
    dlogits = cp.empty_like(x)
    args = (x, cp.ascontiguousarray(lse), t_safe.astype(cp.int64, copy=False), cp.ascontiguousarray(keep),
            cp.ascontiguousarray(scale), dlogits, np.int64(N), np.int32(V))
    _k("cross_entropy_backward", dtype)((N,), (ROW_BLOCK,), args)
    return dlogits.reshape(logits.shape), None
