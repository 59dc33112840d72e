"""Matrix products for a core that works alone: Intel MKL's sequential GEMM when it is installed.

NumPy's wheels multiply matrices with OpenBLAS; PyTorch's CPU build uses MKL. On this project's 2-core CI
machine (an AVX-512 Xeon), MKL's single-threaded SGEMM is about 10% faster than OpenBLAS's at a Transformer's
shapes (``benchmarks/RESULTS.md``), and matrix products are three quarters of a training step, so with
NumPy's BLAS alone a comparison with torch measures two BLAS libraries more than the hand-written code.

``matmul(a, b, out=None, accumulate=False)`` is ``a @ b`` for 2-D float arrays or equal stacks of them (the
linear layers; attention's per-head products). It calls MKL's ``cblas_?gemm`` or, for stacks,
``cblas_?gemm_batch_strided`` (MKL has no Python module: from Numba-compiled code through the functions'
addresses, ``kernels/cpu/gemm.py``, about 1 us a call; through ctypes, about 10 us, without Numba or for
read-only operands) when all of these hold:
- the ``mkl`` package is installed (``pip install scratchllm[fast]`` brings it on x86-64),
- ``SCRATCHLLM_MKL`` is not ``"0"``,
- the caller runs on one core: in a batch shard or a piece of an op's work on a CPU thread
  (``threads.in_line()``, or a shard worker process), where OpenBLAS is held at one thread anyway; elsewhere
  NumPy's multi-threaded OpenBLAS keeps every core,
- both operands are float32 (or both float64) and each is row-major or the transpose of a row-major matrix;
  a given ``out`` is writeable, row-major and apart from both operands (``gemm_args`` and ``_product_shape``
  say exactly what is taken).
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
from ..backend import get_xp
from .cpu.gemm_layout import _NO_TRANS, _TRANS, ROW_MAJOR, apart, gemm_args, stacks_args  # noqa: F401
from .status import _numba_reason

ENV_VAR = "SCRATCHLLM_MKL"
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


_REAL = (np.dtype(np.float32), np.dtype(np.float64))


def _product_shape(a, b, out):
    """The shape of ``a @ b`` when MKL may compute it here (before the layouts are looked at), else None."""
    if (type(a) is not np.ndarray or type(b) is not np.ndarray or a.dtype != b.dtype or a.ndim != b.ndim
            or a.ndim not in (2, 3, 4) or a.dtype not in _REAL or a.shape[-1] != b.shape[-2]
            or a.shape[:-2] != b.shape[:-2] or not a.size or not b.size or not threads.in_line_active()
            or os.environ.get(ENV_VAR, "1").strip() == "0"):
        return None
    shape = a.shape[:-1] + (b.shape[-1],)
    if out is not None and (type(out) is not np.ndarray or out.shape != shape or out.dtype != a.dtype
                            or not out.flags.writeable or np.may_share_memory(out, a)
                            or np.may_share_memory(out, b)):  # BLAS may not write what it reads: NumPy copies
        return None
    return shape


@functools.lru_cache(maxsize=4)
def _compiled(lib):
    """{(dtype char, ndim): (compiled caller, address of its MKL function)} for a loaded libmkl_rt when Numba
    imports (``kernels/cpu/gemm.py``), else None: then the GEMMs go through ctypes, the same calls with about
    10 us of Python each instead of 1."""
    if not isinstance(lib, ctypes.CDLL) or _numba_reason() is not None:
        return None
    from .cpu import gemm  # Numba: imported only when it is there

    def address(name):
        return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value

    callers = {2: (gemm.gemm_2d, ""), 3: (gemm.gemm_3d, "_batch_strided"), 4: (gemm.gemm_4d, "_batch")}
    return {(char, ndim): (caller, address(f"cblas_{kind}gemm{suffix}"))
            for char, kind in (("f", "s"), ("d", "d")) for ndim, (caller, suffix) in callers.items()}


def _gemm(lib, a, b, out, beta):
    """out = a @ b + beta * out through MKL; False (nothing done) when a layout fits no CBLAS description."""
    compiled = _compiled(lib)
    if compiled is not None and a.flags.writeable and b.flags.writeable:  # compiled for writeable arrays only
        caller, address = compiled[a.dtype.char, a.ndim]
        return caller(address, a, b, out, 1.0, beta)
    if a.ndim == 4:  # stacks of stacks need the pointer arrays built in compiled code: NumPy's product here
        return False
    M, K, N, step = a.shape[-2], a.shape[-1], b.shape[-1], a.itemsize
    n = a.shape[0] if a.ndim == 3 else 1
    strides = [(x.strides[0] if x.ndim == 3 else 0,) + x.strides[-2:] for x in (a, b, out)]
    ok, ta, lda, tb, ldb, ldc, batch_a, batch_b, batch_c = gemm_args(M, K, N, n, a.ndim == 3, step, *strides)
    if not ok:
        return False
    kind, batch = "s" if a.dtype == np.float32 else "d", "" if a.ndim == 2 else "_batch_strided"
    function = getattr(lib, f"cblas_{kind}gemm{batch}")
    if a.ndim == 2:
        function(ROW_MAJOR, ta, tb, M, N, K, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, beta, out.ctypes.data, ldc)
    else:
        function(ROW_MAJOR, ta, tb, M, N, K, 1.0, a.ctypes.data, lda, batch_a, b.ctypes.data, ldb, batch_b, beta,
                 out.ctypes.data, ldc, batch_c, n)
    return True


def matmul(a, b, out=None, accumulate=False):
    """``a @ b`` for 2-D arrays (M, K) @ (K, N), or stacks of them (n, M, K) @ (n, K, N), through MKL's GEMM
    where the module docstring says, else NumPy's. With ``out`` the product is written there (added to what
    it holds when ``accumulate``: MKL's beta = 1, no temporary) and ``out`` is returned; otherwise a new
    C-contiguous array."""
    shape = _product_shape(a, b, out)
    lib = None if shape is None else _library()[0]
    if lib is not None:
        result = np.empty(shape, dtype=a.dtype) if out is None else out  # (…, M, N)
        if _gemm(lib, a, b, result, 1.0 if accumulate and out is not None else 0.0):
            return result
    if out is None:
        return a @ b
    if accumulate:
        out += a @ b
        return out
    return get_xp(a).matmul(a, b, out=out)
