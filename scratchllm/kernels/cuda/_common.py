"""Helpers shared by the kernel families: the CUDA preamble, compiling and caching modules, launch sizes.

Nothing here imports cupy at module level: ``import scratchllm.kernels`` (and reading the CUDA sources, which
the tests compile with nvcc) works on a machine without CuPy or a GPU. CuPy is imported the first time a
kernel is launched.

Every kernel source is written for NVRTC (what CuPy compiles with): no ``#include``, so no <cmath>, no
INFINITY macro. The preamble below supplies what the kernels need: float/double overloads of the math
functions, -inf and NaN, and the warp reductions.
"""

from __future__ import annotations

import functools

import numpy as np

WARP = 32
ROWS_PER_BLOCK = 8  # warp-per-row kernels: 8 warps (256 threads) per block, one row each
ROW_BLOCK = 256  # block-per-row kernels: threads per block

# C++ type of each supported dtype: every RawModule kernel is a template instantiated for both.
CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

PREAMBLE = r"""
// ---- scratchllm kernel preamble: math overloads, constants, warp reductions (no #include: NVRTC) ----
__device__ __forceinline__ float  sl_exp(float x)   { return expf(x); }
__device__ __forceinline__ double sl_exp(double x)  { return exp(x); }
__device__ __forceinline__ float  sl_log(float x)   { return logf(x); }
__device__ __forceinline__ double sl_log(double x)  { return log(x); }
__device__ __forceinline__ float  sl_sqrt(float x)  { return sqrtf(x); }
__device__ __forceinline__ double sl_sqrt(double x) { return sqrt(x); }

// -inf and a quiet NaN from their bit patterns
template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float((int)0xff800000u); }
template <> __device__ __forceinline__ double neg_inf<double>() {
    return __longlong_as_double((long long)0xfff0000000000000ull);
}
template <typename T> __device__ __forceinline__ T quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() { return __int_as_float((int)0x7fc00000u); }
template <> __device__ __forceinline__ double quiet_nan<double>() {
    return __longlong_as_double((long long)0x7ff8000000000000ull);
}

// Sum over the 32 lanes of a warp; every lane gets the total (butterfly shuffles).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Online softmax statistics: (m, s) summarizes a set of values as m = max, s = sum(exp(v - m)).
// softmax_add folds one more value in; softmax_merge combines two summaries. An empty summary is
// (-inf, 0); -inf values (masked) add nothing, so a row of all -inf keeps (-inf, 0) and gives NaN
// later (0 / 0), as the NumPy op does. NaN in, NaN out, as NumPy: a NaN value (or a NaN summary) makes
// the summary (NaN, NaN), which every later add and merge keeps, so every output of the row is NaN. A +inf
// max counts its own term as exp(v - v) = exp(inf - inf) = NaN, as NumPy's exp(x - max) does.
template <typename T>
__device__ __forceinline__ void softmax_add(T& m, T& s, T v) {
    if (v != v || m != m) {  // a NaN value, or a NaN seen before
        m = quiet_nan<T>();
        s = quiet_nan<T>();
    } else if (v > m) {  // a new max: rescale what was summed so far
        s = (m == neg_inf<T>() ? T(0) : s * sl_exp(m - v)) + sl_exp(v - v);
        m = v;
    } else if (v != neg_inf<T>()) {
        s += sl_exp(v - m);
    }
}

template <typename T>
__device__ __forceinline__ void softmax_merge(T& m, T& s, T m2, T s2) {
    if (m != m || m2 != m2) {  // either side saw a NaN
        m = quiet_nan<T>();
        s = quiet_nan<T>();
        return;
    }
    const T M = m > m2 ? m : m2;
    if (M == neg_inf<T>()) return;  // both empty
    s = (m == neg_inf<T>() ? T(0) : s * sl_exp(m - M)) + (m2 == neg_inf<T>() ? T(0) : s2 * sl_exp(m2 - M));
    m = M;
}

// softmax_merge over the 32 lanes of a warp; every lane gets the row's (m, s).
template <typename T>
__device__ __forceinline__ void warp_softmax_reduce(T& m, T& s) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const T m2 = __shfl_xor_sync(0xffffffffu, m, offset);
        const T s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        softmax_merge(m, s, m2, s2);
    }
}

// softmax_merge over a whole block (blockDim.x a multiple of 32, at most 1024): warps first, then warp 0
// merges the per-warp results from shared memory. Every thread gets the block's (m, s). Call once per kernel.
template <typename T>
__device__ __forceinline__ void block_softmax_reduce(T& m, T& s) {
    __shared__ T shared_m[32];
    __shared__ T shared_s[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    warp_softmax_reduce(m, s);
    if (lane == 0) { shared_m[warp] = m; shared_s[warp] = s; }
    __syncthreads();
    if (warp == 0) {
        m = lane < warps ? shared_m[lane] : neg_inf<T>();
        s = lane < warps ? shared_s[lane] : T(0);
        warp_softmax_reduce(m, s);
        if (lane == 0) { shared_m[0] = m; shared_s[0] = s; }
    }
    __syncthreads();
    m = shared_m[0];
    s = shared_s[0];
}
// ---- end of preamble ----
"""


def cupy():
    """The cupy module, imported on first use."""
    import cupy as _cupy

    return _cupy


@functools.lru_cache(maxsize=None)
def raw_module(source: str, names: tuple):
    """Compile ``source`` once per process (CuPy also caches the binary on disk) with every template
    instantiation in ``names`` (e.g. ``"softmax_forward<float>"``)."""
    return cupy().RawModule(code=source, options=("-std=c++14",), name_expressions=names)


@functools.lru_cache(maxsize=None)
def kernel(source: str, names: tuple, name: str, dtype):
    """The compiled ``name<float>`` or ``name<double>`` of ``source``, for arrays of ``dtype``: looked up once
    (a ``RawKernel`` object per launch would cost a lookup and an allocation at every call)."""
    return raw_module(source, names).get_function(f"{name}<{CTYPES[np.dtype(dtype)]}>")


def instantiations(*kernels: str) -> tuple:
    """The name expressions of each kernel template for float and double."""
    return tuple(f"{k}<{t}>" for k in kernels for t in CTYPES.values())


@functools.lru_cache(maxsize=None)
def sm_count() -> int:
    """Streaming multiprocessors on the current device (sizes the grids of the column reductions)."""
    cp = cupy()
    return int(cp.cuda.Device().attributes["MultiProcessorCount"])


def check_dtype(*arrays) -> None:
    """The kernels are instantiated for float32 and float64; the ops have rejected anything else already."""
    for a in arrays:
        if np.dtype(a.dtype) not in CTYPES:  # pragma: no cover - the ops validate dtypes before dispatch
            raise TypeError(f"the CUDA kernels take float32 or float64 arrays; got {a.dtype}")
