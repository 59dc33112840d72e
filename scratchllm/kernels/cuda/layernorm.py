"""LayerNorm forward and backward as CUDA kernels. Reference: ``scratchllm/ops/layernorm.py``.

Same signatures, return values and cache as the op: the forward returns ``out, (norm, rstd, w)`` with
``norm`` (..., C) and ``rstd`` (..., 1), so a kernel forward's cache works with the NumPy/CuPy backward
and the other way round.

Launch configuration:
    layernorm_forward, layernorm_backward_dx: one warp per row (N = prod(...) rows of C entries), 8 rows
        per 256-thread block, grid ceil(N / 8). Each lane strides over the row (j = lane, lane + 32, ...:
        consecutive lanes read consecutive addresses), warp shuffles do the reductions; any C works.
    layernorm_backward_dwdb: the column sums dw = sum_n dout * norm and db = sum_n dout. Blocks of 32 x 8
        threads own 32 columns and a chunk of rows (grid ceil(C / 32) x chunks); each writes one row of
        per-chunk partial sums, which one CuPy sum over the chunks finishes. No atomics: deterministic.
"""

from __future__ import annotations

import numpy as np

from ._common import PREAMBLE, ROWS_PER_BLOCK, WARP, check_dtype, cupy, instantiations, kernel, sm_count

CUDA_SOURCE = PREAMBLE + r"""
// Forward, one warp per row:
//   mean = sum(x) / C;  var = sum((x - mean)^2) / C   (two passes, like the op: no cancellation)
//   rstd = 1 / sqrt(var + eps);  norm = (x - mean) * rstd;  out = norm * w + b
template <typename T>
__global__ void layernorm_forward(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                  T* __restrict__ out, T* __restrict__ norm, T* __restrict__ rstd,
                                  long long N, int C, T eps) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;  // the whole warp leaves together, so the shuffles below see all 32 lanes
    const T* xr = x + row * C;
    T sum = 0;
    for (int j = lane; j < C; j += 32) sum += xr[j];
    const T mean = warp_sum(sum) / T(C);
    T sq = 0;
    for (int j = lane; j < C; j += 32) {
        const T d = xr[j] - mean;
        sq += d * d;
    }
    const T var = warp_sum(sq) / T(C);
    const T r = T(1) / sl_sqrt(var + eps);
    T* nr = norm + row * C;
    T* outr = out + row * C;
    for (int j = lane; j < C; j += 32) {
        const T n = (xr[j] - mean) * r;
        nr[j] = n;
        outr[j] = n * w[j] + b[j];
    }
    if (lane == 0) rstd[row] = r;
}

// Backward for dx, one warp per row (dnorm = dout * w; means over the row):
//   dx = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
template <typename T>
__global__ void layernorm_backward_dx(const T* __restrict__ dout, const T* __restrict__ norm,
                                      const T* __restrict__ rstd, const T* __restrict__ w,
                                      T* __restrict__ dx, long long N, int C) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;
    const T* dr = dout + row * C;
    const T* nr = norm + row * C;
    T s_dn = 0, s_dnn = 0;
    for (int j = lane; j < C; j += 32) {
        const T dn = dr[j] * w[j];
        s_dn += dn;
        s_dnn += dn * nr[j];
    }
    const T mean_dn = warp_sum(s_dn) / T(C);
    const T mean_dnn = warp_sum(s_dnn) / T(C);
    const T r = rstd[row];
    T* dxr = dx + row * C;
    for (int j = lane; j < C; j += 32) {
        const T dn = dr[j] * w[j];
        dxr[j] = r * (dn - mean_dn - nr[j] * mean_dnn);
    }
}

// Backward for dw and db: column sums over rows, in chunks. Block (32, 8): threadIdx.x picks the column
// (coalesced), threadIdx.y strides over the chunk's rows; the 8 partial sums meet in shared memory.
//   dw_part[chunk, c] = sum over the chunk's rows of dout[n, c] * norm[n, c];  db_part likewise of dout
template <typename T>
__global__ void layernorm_backward_dwdb(const T* __restrict__ dout, const T* __restrict__ norm,
                                        T* __restrict__ dw_part, T* __restrict__ db_part,
                                        long long N, int C, long long rows_per_chunk) {
    __shared__ T sh_w[8][33];  // 33: no bank conflicts
    __shared__ T sh_b[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const long long r0 = (long long)blockIdx.y * rows_per_chunk;
    const long long r1 = r0 + rows_per_chunk < N ? r0 + rows_per_chunk : N;
    T sw = 0, sb = 0;
    if (c < C) {
        for (long long n = r0 + threadIdx.y; n < r1; n += blockDim.y) {
            const T d = dout[n * C + c];
            sb += d;
            sw += d * norm[n * C + c];
        }
    }
    sh_w[threadIdx.y][threadIdx.x] = sw;
    sh_b[threadIdx.y][threadIdx.x] = sb;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int k = 1; k < (int)blockDim.y; ++k) {
            sw += sh_w[k][threadIdx.x];
            sb += sh_b[k][threadIdx.x];
        }
        dw_part[(long long)blockIdx.y * C + c] = sw;
        db_part[(long long)blockIdx.y * C + c] = sb;
    }
}
"""

KERNELS = ("layernorm_forward", "layernorm_backward_dx", "layernorm_backward_dwdb")
NAME_EXPRESSIONS = instantiations(*KERNELS)
DWDB_THREADS = (32, 8)  # must match sh_w / sh_b above


def _k(name, dtype):
    return kernel(CUDA_SOURCE, NAME_EXPRESSIONS, name, dtype)


def layernorm_forward(x, w, b, eps=1e-5):
    """``ops.layernorm_forward`` on the GPU: ``out, (norm, rstd, w)``."""
    cp = cupy()
    check_dtype(x)
    x, w, b = (cp.ascontiguousarray(a) for a in (x, w, b))
    C = x.shape[-1]
    N = x.size // C
    out = cp.empty_like(x)
    norm = cp.empty_like(x)
    rstd = cp.empty(x.shape[:-1] + (1,), dtype=x.dtype)
    grid = ((N + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK,)
    _k("layernorm_forward", x.dtype)(grid, (ROWS_PER_BLOCK * WARP,),
                                     (x, w, b, out, norm, rstd, np.int64(N), np.int32(C), x.dtype.type(eps)))
    return out, (norm, rstd, w)


def layernorm_backward(dout, cache):
    """``ops.layernorm_backward`` on the GPU: ``dx, dw, db``."""
    cp = cupy()
    norm, rstd, w = cache
    dtype = norm.dtype
    dout = cp.ascontiguousarray(dout.astype(dtype, copy=False))
    norm, rstd, w = (cp.ascontiguousarray(a) for a in (norm, rstd, w))
    C = norm.shape[-1]
    N = norm.size // C
    dx = cp.empty_like(norm)
    grid = ((N + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK,)
    _k("layernorm_backward_dx", dtype)(grid, (ROWS_PER_BLOCK * WARP,),
                                       (dout, norm, rstd, w, dx, np.int64(N), np.int32(C)))
    col_blocks = (C + 31) // 32
    # enough chunks to fill the device about 4 times over, but at least 64 rows per chunk
    chunks = max(1, min((N + 63) // 64, (4 * sm_count() + col_blocks - 1) // col_blocks))
    rows_per_chunk = (N + chunks - 1) // chunks
    chunks = (N + rows_per_chunk - 1) // rows_per_chunk
    dw_part = cp.empty((chunks, C), dtype=dtype)
    db_part = cp.empty((chunks, C), dtype=dtype)
    _k("layernorm_backward_dwdb", dtype)((col_blocks, chunks), DWDB_THREADS,
                                         (dout, norm, dw_part, db_part, np.int64(N), np.int32(C),
                                          np.int64(rows_per_chunk)))
    if chunks == 1:
        return dx, dw_part[0], db_part[0]
    return dx, dw_part.sum(axis=0), db_part.sum(axis=0)
