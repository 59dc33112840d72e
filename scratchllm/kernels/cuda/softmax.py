"""Softmax forward and backward, and attention's scaled causal softmax, as CUDA kernels.

References: ``scratchllm/ops/softmax.py`` (``softmax_forward``/``softmax_backward``, same signatures and
cache ``(y, axis)``) and the scale-mask-softmax steps of ``scratchllm/ops/attention.py``:

    att *= scale;  att += -inf above the causal diagonal;  p = softmax(att, axis=-1)

which ``scaled_causal_softmax_forward`` does in one pass over ``att`` (the mask is computed from the row
index, never built): p is exactly 0 where masked, as in the op, and its cache ``(p, -1)`` is softmax's,
so the (kernel or xp) ``softmax_backward`` serves attention's backward unchanged.

Launch configuration (all three): one warp per row of C entries, 8 rows per 256-thread block, grid
ceil(N / 8) for N rows. A lane strides over the row; the forward keeps online softmax statistics
(running max m and s = sum(exp(x - m)), rescaled when the max grows), merges them across the warp
with shuffles, then writes exp(x - m) / s: two reads of the row instead of the op's five passes.
A softmax over another axis is moved to the last axis first (a copy).
"""

from __future__ import annotations

import numpy as np

from ._common import PREAMBLE, ROWS_PER_BLOCK, WARP, check_dtype, cupy, instantiations, kernel

CUDA_SOURCE = PREAMBLE + r"""
// y = exp(x - max) / sum(exp(x - max)) over each row of C entries, one warp per row.
template <typename T>
__global__ void softmax_forward(const T* __restrict__ x, T* __restrict__ y, long long N, int C) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;  // whole warps leave together
    const T* xr = x + row * C;
    T m = neg_inf<T>(), s = 0;
    for (int j = lane; j < C; j += 32) softmax_add(m, s, xr[j]);
    warp_softmax_reduce(m, s);
    T* yr = y + row * C;
    for (int j = lane; j < C; j += 32) yr[j] = sl_exp(xr[j] - m) / s;
}

// Attention's scale + causal mask + softmax. att holds N = B*H*Tq rows of Tk raw scores q.k; row r is query
// i = r % Tq, which sees keys j <= i + offset (offset = Tk - Tq: the queries are the last Tq positions).
//   p[j] = exp(att[j] * scale - m) / s over the visible j (m, s over the visible j), p[j] = 0 beyond.
// causal = 0: every key is visible (scale + softmax only).
template <typename T>
__global__ void scaled_causal_softmax_forward(const T* __restrict__ att, T* __restrict__ p, long long N,
                                              int Tq, int Tk, T scale, int causal, int offset) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;
    int visible = Tk;
    if (causal) {
        const int last = (int)(row % Tq) + offset;  // the last key this query sees
        visible = last + 1 < Tk ? last + 1 : Tk;
    }
    const T* ar = att + row * Tk;
    T m = neg_inf<T>(), s = 0;
    for (int j = lane; j < visible; j += 32) softmax_add(m, s, ar[j] * scale);
    warp_softmax_reduce(m, s);
    T* pr = p + row * Tk;
    for (int j = lane; j < Tk; j += 32) pr[j] = j < visible ? sl_exp(ar[j] * scale - m) / s : T(0);
}

// dx = y * (dout - sum(dout * y)) over each row, one warp per row.
template <typename T>
__global__ void softmax_backward(const T* __restrict__ dout, const T* __restrict__ y, T* __restrict__ dx,
                                 long long N, int C) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;
    const T* dr = dout + row * C;
    const T* yr = y + row * C;
    T total = 0;
    for (int j = lane; j < C; j += 32) total += dr[j] * yr[j];
    total = warp_sum(total);
    T* dxr = dx + row * C;
    for (int j = lane; j < C; j += 32) dxr[j] = yr[j] * (dr[j] - total);
}
"""

KERNELS = ("softmax_forward", "scaled_causal_softmax_forward", "softmax_backward")
NAME_EXPRESSIONS = instantiations(*KERNELS)


def _k(name, dtype):
    return kernel(CUDA_SOURCE, NAME_EXPRESSIONS, name, dtype)


def _grid(N):
    return ((N + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK,), (ROWS_PER_BLOCK * WARP,)


def _last_axis(a, axis):
    """``a`` with ``axis`` moved last, C-contiguous (a copy only when needed)."""
    cp = cupy()
    if axis % a.ndim != a.ndim - 1:
        a = cp.moveaxis(a, axis, -1)
    return cp.ascontiguousarray(a)


def softmax_forward(x, axis=-1):
    """``ops.softmax_forward`` on the GPU: ``y, (y, axis)``."""
    cp = cupy()
    check_dtype(x)
    xl = _last_axis(x, axis)
    C = xl.shape[-1]
    N = xl.size // C
    y = cp.empty_like(xl)
    grid, block = _grid(N)
    _k("softmax_forward", x.dtype)(grid, block, (xl, y, np.int64(N), np.int32(C)))
    if axis % x.ndim != x.ndim - 1:
        y = cp.moveaxis(y, -1, axis)
    return y, (y, axis)


def softmax_backward(dout, cache):
    """``ops.softmax_backward`` on the GPU: ``(dx,)``."""
    cp = cupy()
    y, axis = cache
    dl = _last_axis(dout.astype(y.dtype, copy=False), axis)
    yl = _last_axis(y, axis)
    C = yl.shape[-1]
    N = yl.size // C
    dx = cp.empty_like(yl)
    grid, block = _grid(N)
    _k("softmax_backward", y.dtype)(grid, block, (dl, yl, dx, np.int64(N), np.int32(C)))
    if axis % y.ndim != y.ndim - 1:
        dx = cp.moveaxis(dx, -1, axis)
    return (dx,)


def scaled_causal_softmax_forward(att, scale, causal=True):
    """``softmax(att * scale + causal mask, axis=-1)`` for attention scores ``att`` (..., Tq, Tk), the
    queries being the last Tq of the Tk positions. Returns ``p, (p, -1)`` (softmax's cache)."""
    cp = cupy()
    check_dtype(att)
    att = cp.ascontiguousarray(att)
    Tq, Tk = att.shape[-2], att.shape[-1]
    N = att.size // Tk
    p = cp.empty_like(att)
    grid, block = _grid(N)
    _k("scaled_causal_softmax_forward", att.dtype)(
        grid, block, (att, p, np.int64(N), np.int32(Tq), np.int32(Tk), att.dtype.type(scale),
                      np.int32(bool(causal)), np.int32(Tk - Tq)))
    return p, (p, -1)
