"""Matrix products for a core that works alone: Intel MKL's sequential GEMM when it is installed.

NumPy's wheels multiply matrices with OpenBLAS; PyTorch's CPU build uses MKL. On this project's 2-core CI
machine (an AVX-512 Xeon), MKL's single-threaded SGEMM is about 10% faster than OpenBLAS's at a Transformer's
shapes (``benchmarks/RESULTS.md``), and matrix products are three quarters of a training step, so with
NumPy's BLAS alone a comparison with torch measures two BLAS libraries more than the hand-written code.

``matmul(a, b)`` is ``a @ b`` for 2-D float arrays. It calls MKL's ``cblas_sgemm``/``cblas_dgemm`` (through
ctypes: MKL has no Python module) when all of these hold:
- the ``mkl`` package is installed (``pip install scratchllm[fast]`` brings it on x86-64),
- ``SCRATCHLLM_MKL`` is not ``"0"``,
- the caller runs in a single-core batch shard (``threads.in_line()``, or a shard worker process), where
  OpenBLAS is held at one thread anyway; elsewhere NumPy's multi-threaded OpenBLAS keeps every core,
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
    for name, real in (("cblas_sgemm", ctypes.c_float), ("cblas_dgemm", ctypes.c_double)):
        getattr(lib, name).restype = None
        getattr(lib, name).argtypes = [ctypes.c_int] * 6 + [real, ctypes.c_void_p, ctypes.c_int,
                                                            ctypes.c_void_p, ctypes.c_int, real, ctypes.c_void_p,
                                                            ctypes.c_int]
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


def _operand(a, rows, cols):
    """(transpose flag, leading dimension) that describe the (rows, cols) matrix ``a`` to row-major CBLAS,
    or None when its strides fit neither a row-major nor a transposed row-major layout."""
    step = a.itemsize
    s0, s1 = a.strides
    if (s1 == step or cols == 1) and s0 % step == 0 and s0 // step >= max(1, cols):
        return _NO_TRANS, s0 // step
    if (s0 == step or rows == 1) and s1 % step == 0 and s1 // step >= max(1, rows):
        return _TRANS, s1 // step
    return None


def matmul(a, b):
    """``a @ b`` for 2-D arrays ``a`` (M, K) and ``b`` (K, N): MKL's GEMM where the module docstring says,
    else NumPy's. The result is a new C-contiguous (M, N) array either way."""
    if (a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype not in (np.float32, np.float64)
            or type(a) is not np.ndarray or type(b) is not np.ndarray or 0 in a.shape or 0 in b.shape
            or a.shape[1] != b.shape[0] or not threads.in_line_active()
            or os.environ.get(ENV_VAR, "1").strip() == "0"):
        return a @ b
    lib, _ = _library()
    (M, K), N = a.shape, b.shape[1]
    op_a, op_b = _operand(a, M, K), _operand(b, K, N)
    if lib is None or op_a is None or op_b is None or max(M, N, K, op_a[1], op_b[1]) >= 2**31:
        return a @ b
    out = np.empty((M, N), dtype=a.dtype)  # (M, N)
    gemm = lib.cblas_sgemm if a.dtype == np.float32 else lib.cblas_dgemm
    gemm(_ROW_MAJOR, op_a[0], op_b[0], M, N, K, 1.0, a.ctypes.data, op_a[1], b.ctypes.data, op_b[1], 0.0,
         out.ctypes.data, N)
    return out
