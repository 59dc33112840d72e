"""Matrix products for a core that works alone: Intel MKL's sequential GEMM when it is installed.

NumPy's wheels multiply matrices with OpenBLAS; PyTorch's CPU build uses MKL. On this project's 2-core CI
machine (an AVX-512 Xeon), MKL's single-threaded SGEMM is about 10% faster than OpenBLAS's at a Transformer's
shapes (``benchmarks/RESULTS.md``), and matrix products are three quarters of a training step, so with
NumPy's BLAS alone a comparison with torch measures two BLAS libraries more than the hand-written code.

``matmul(a, b, out=None, accumulate=False)`` is ``a @ b`` for 2-D float arrays or equal stacks of them (the
linear layers; attention's per-head products). It calls MKL's ``cblas_?gemm`` or, for stacks,
``cblas_?gemm_batch_strided`` (through ctypes: MKL has no Python module) when all of these hold:
- the ``mkl`` package is installed (``pip install scratchllm[fast]`` brings it on x86-64),
- ``SCRATCHLLM_MKL`` is not ``"0"``,
- the caller runs on one core: in a batch shard or a piece of an op's work on a CPU thread
  (``threads.in_line()``, or a shard worker process), where OpenBLAS is held at one thread anyway; elsewhere
  NumPy's multi-threaded OpenBLAS keeps every core,
- both operands are float32 (or both float64) and each is row-major or the transpose of a row-major matrix.
Otherwise it is NumPy's ``a @ b``. MKL runs with its sequential threading layer: it starts no threads, so
the shard workers' fork stays safe.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import site
import sys

import numpy as np

from . import threads
from .backend import get_xp

ENV_VAR = "SCRATCHLLM_MKL"
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS enums
_SEQUENTIAL, _LP64 = 1, 0  # MKL_THREADING_SEQUENTIAL, MKL_INTERFACE_LP64


@functools.lru_cache(maxsize=1)
def _library():
    """(the loaded libmkl_rt, None) or (None, why not); looked for once."""
    candidates = []
    for prefix in (sys.prefix, site.getuserbase()):
        candidates += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")), reverse=True)
    found = ctypes.util.find_library("mkl_rt")
    if found:
        candidates.append(found)
    if not candidates:
        return None, "MKL is not installed (pip install mkl, or scratchllm[fast])"
    try:
        lib = ctypes.CDLL(candidates[0])
        # 32-bit integers (the argtypes below) and no MKL threads. Each call returns the layer in force, which
        # is not the one asked for when MKL already ran in this process (an MKL-linked NumPy, say): then the
        # GEMMs could start threads or read our ints as 64-bit, so MKL is not used.
        interface = lib.MKL_Set_Interface_Layer(ctypes.c_int(_LP64))
        threading = lib.MKL_Set_Threading_Layer(ctypes.c_int(_SEQUENTIAL))
    except (OSError, AttributeError) as exc:
        return None, f"MKL did not load from {candidates[0]}: {exc}"
    if interface != _LP64 or threading != _SEQUENTIAL:
        return None, (f"MKL is already set up otherwise in this process (interface layer {interface}, threading "
                      f"layer {threading}; scratchllm needs LP64 and sequential)")
    i, p = ctypes.c_int, ctypes.c_void_p
    for kind, real in (("s", ctypes.c_float), ("d", ctypes.c_double)):
        try:
            gemm, batch = getattr(lib, f"cblas_{kind}gemm"), getattr(lib, f"cblas_{kind}gemm_batch_strided")
        except AttributeError as exc:  # an MKL older than 2020.2 has no strided batch GEMM
            return None, f"MKL at {candidates[0]} lacks a function scratchllm calls: {exc}"
        gemm.restype = batch.restype = None
        gemm.argtypes = [i] * 6 + [real, p, i, p, i, real, p, i]
        batch.argtypes = [i] * 6 + [real, p, i, i, p, i, i, real, p, i, i, i]  # (…, stride) per operand, count
    return lib, None


def status() -> tuple[bool, str]:
    """``(available, reason)``: whether ``matmul`` can use MKL (in shards), and why (not)."""
    if os.environ.get(ENV_VAR, "1").strip() == "0":
        return False, f"{ENV_VAR}=0: NumPy's BLAS everywhere"
    lib, reason = _library()
    if lib is None:
        return False, reason
    buf = ctypes.create_string_buffer(200)
    lib.MKL_Get_Version_String(buf, len(buf))
    return True, f"{buf.value.decode(errors='replace').strip()}, sequential, in single-core shards"


def _operand(strides, rows, cols, step):
    """(transpose flag, leading dimension) that describe a (rows, cols) matrix with these byte ``strides`` to
    row-major CBLAS, or None when they fit neither a row-major nor a transposed row-major layout."""
    s0, s1 = strides
    if (s1 == step or cols == 1) and s0 % step == 0 and s0 // step >= max(1, cols):
        return _NO_TRANS, s0 // step
    if (s0 == step or rows == 1) and s1 % step == 0 and s1 // step >= max(1, rows):
        return _TRANS, s1 // step
    return None


def _mkl_call(a, b, out):
    """The GEMM arguments for ``out = a @ b`` (2-D, or stacks of n matrices), or None where MKL is not used."""
    if (type(a) is not np.ndarray or type(b) is not np.ndarray or a.dtype != b.dtype or a.ndim != b.ndim
            or a.ndim not in (2, 3) or a.dtype not in (np.float32, np.float64) or a.shape[-1] != b.shape[-2]
            or a.shape[:-2] != b.shape[:-2] or 0 in a.shape or 0 in b.shape or not threads.in_line_active()
            or os.environ.get(ENV_VAR, "1").strip() == "0"):
        return None
    lib, _ = _library()
    M, K, N, step = a.shape[-2], a.shape[-1], b.shape[-1], a.itemsize
    op_a, op_b = _operand(a.strides[-2:], M, K, step), _operand(b.strides[-2:], K, N, step)
    shape = a.shape[:-1] + (N,)
    if lib is None or op_a is None or op_b is None or (out is not None and (
            type(out) is not np.ndarray or out.shape != shape or out.dtype != a.dtype or out.strides[-1] != step
            or out.strides[-2] % step or out.strides[-2] // step < N)):
        return None
    n = a.shape[0] if a.ndim == 3 else 1
    batch = [x.strides[0] // step if x.ndim == 3 else 0 for x in (a, b)]
    if a.ndim == 3 and (a.strides[0] % step or b.strides[0] % step or a.strides[0] < 0 or b.strides[0] < 0):
        return None
    if out is not None and a.ndim == 3 and (out.strides[0] % step
                                            or out.strides[0] // step < M * (out.strides[-2] // step)):
        return None  # the out matrices would overlap
    if max(M, N, K, n, op_a[1], op_b[1], *batch) >= 2**31:
        return None
    return lib, op_a, op_b, batch, n, shape


def matmul(a, b, out=None, accumulate=False):
    """``a @ b`` for 2-D arrays (M, K) @ (K, N), or stacks of them (n, M, K) @ (n, K, N), through MKL's GEMM
    where the module docstring says, else NumPy's. With ``out`` the product is written there (added to what
    it holds when ``accumulate``: MKL's beta = 1, no temporary) and ``out`` is returned; otherwise a new
    C-contiguous array."""
    call = _mkl_call(a, b, out)
    if call is None:
        if out is None:
            return a @ b
        if accumulate:
            out += a @ b
            return out
        return get_xp(a).matmul(a, b, out=out)
    lib, op_a, op_b, (stride_a, stride_b), n, shape = call
    if out is None:
        out = np.empty(shape, dtype=a.dtype)  # (…, M, N)
        accumulate = False
    M, K, N, step = a.shape[-2], a.shape[-1], b.shape[-1], a.itemsize
    ldc, beta = out.strides[-2] // step, 1.0 if accumulate else 0.0
    kind = "s" if a.dtype == np.float32 else "d"
    if a.ndim == 2:
        getattr(lib, f"cblas_{kind}gemm")(_ROW_MAJOR, op_a[0], op_b[0], M, N, K, 1.0, a.ctypes.data, op_a[1],
                                          b.ctypes.data, op_b[1], beta, out.ctypes.data, ldc)
    else:
        getattr(lib, f"cblas_{kind}gemm_batch_strided")(
            _ROW_MAJOR, op_a[0], op_b[0], M, N, K, 1.0, a.ctypes.data, op_a[1], stride_a, b.ctypes.data, op_b[1],
            stride_b, beta, out.ctypes.data, ldc, out.strides[0] // step, n)
    return out
