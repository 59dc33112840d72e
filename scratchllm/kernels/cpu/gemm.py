"""The call into MKL's GEMM from compiled code: ``blas.matmul``'s fast path.

``blas.matmul`` calls ``cblas_?gemm`` (and its strided batch form) for a core that works alone. Through
ctypes one call cost about 10 us of Python on the CI machine: checking the layouts, fetching three data
pointers (``a.ctypes.data`` builds an object each time) and converting 14 arguments. A batch shard of
nanoGPT's CPU recipe makes 75 such calls a step, so that was 0.75 ms of a 20 ms step. Here the layout
checks (``gemm_layout.gemm_args``, the same Python function compiled) and the call itself run in Numba: about 1 us.

MKL's functions are called through their addresses, which the caller passes in (``_c_call`` turns an
address into a function pointer in LLVM IR), so the compiled code holds no address of this process and is
cached on disk like the kernels.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import gemm_layout
from .compile import jit
from .gemm_layout import ROW_MAJOR, gemm_args, stacks_args


# blas's layout functions, compiled into the callers below: the very Python code of the ctypes path
@overload(gemm_layout._operand, jit_options={"error_model": "numpy"})
def _operand(s0, s1, rows, cols, step):
    return gemm_layout._operand


@overload(gemm_layout.gemm_args, jit_options={"error_model": "numpy"})
def _gemm_args(M, K, N, n, stacked, step, sa, sb, sc):
    return gemm_layout.gemm_args


@overload(gemm_layout.apart, jit_options={"error_model": "numpy"})
def _apart(M, N, ldc, n_hi, s_hi, n_lo, s_lo):
    return gemm_layout.apart


@overload(gemm_layout.stacks_args, jit_options={"error_model": "numpy"})
def _stacks_args(M, K, N, n_hi, n_lo, step, sa, sb, sc):
    return gemm_layout.stacks_args


# The C argument kinds: i = int, f = the real type, p = a pointer (Numba passes it as an integer address)
GEMM = "iiiiiifpipifpi"  # (layout, transa, transb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc)
GEMM_BATCH = "iiiiiifpiipiifpiii"  # the same with a stride after each matrix, and the batch count last
# cblas_?gemm_batch, MKL's group API with one group: the layout, then arrays (of one entry, or of one pointer
# per matrix for a, b, c), the group count and an array of the group's size
GEMM_POINTERS = "i" + "p" * 13 + "ip"


def _c_call(kinds):
    """An intrinsic ``call(address, *args)`` that calls the C function at ``address`` (a void function with
    argument ``kinds``), converting each Numba integer to a C int or a pointer and passing reals as they are.
    A pointer argument given as an array passes its data: pass arrays, not ``a.ctypes.data``, for arrays made
    in compiled code, which Numba frees after their last use (an address taken earlier would outlive them)."""

    @intrinsic
    def call(typingctx, address, *args):
        if len(args) != len(kinds):
            return None

        def codegen(context, builder, signature, values):
            c_args = []  # *args arrive packed in one tuple
            for kind, value, ty in zip(kinds, cgutils.unpack_tuple(builder, values[1]), signature.args[1].types):
                if kind == "i":
                    c_args.append(context.cast(builder, value, ty, types.int32))
                elif kind == "p" and isinstance(ty, types.Array):  # its data: the array lives through the call
                    data = context.make_array(ty)(context, builder, value).data
                    c_args.append(builder.bitcast(data, ir.IntType(8).as_pointer()))
                elif kind == "p":
                    c_args.append(builder.inttoptr(context.cast(builder, value, ty, types.intp),
                                                   ir.IntType(8).as_pointer()))
                else:
                    c_args.append(value)
            fnty = ir.FunctionType(ir.VoidType(), [a.type for a in c_args])
            fn = builder.inttoptr(context.cast(builder, values[0], signature.args[0], types.intp), fnty.as_pointer())
            builder.call(fn, c_args)
            return context.get_dummy_value()

        return types.void(address, types.StarArgTuple(args)), codegen

    return call


_gemm = _c_call(GEMM)
_gemm_batch = _c_call(GEMM_BATCH)
_gemm_pointers = _c_call(GEMM_POINTERS)

# Writeable arrays of any layout (blas._gemm sends read-only operands through ctypes)
_SIG_2D = [f"boolean(intp, {t}[:, :], {t}[:, :], {t}[:, :], {t}, {t})" for t in ("float32", "float64")]
_SIG_3D = [f"boolean(intp, {t}[:, :, :], {t}[:, :, :], {t}[:, :, :], {t}, {t})" for t in ("float32", "float64")]
_SIG_4D = [f"boolean(intp, {t}[:, :, :, :], {t}[:, :, :, :], {t}[:, :, :, :], {t}, {t})" for t in ("float32", "float64")]


@jit(signatures=_SIG_2D)
def gemm_2d(address, a, b, out, alpha, beta):
    """out = alpha * a @ b + beta * out through ``cblas_?gemm`` at ``address``; False (nothing done) when a
    layout fits no CBLAS description. a (M, K), b (K, N), out (M, N)."""
    M, K = a.shape
    N = b.shape[1]
    ok, ta, lda, tb, ldb, ldc, _, _, _ = gemm_args(M, K, N, 1, False, a.itemsize, (0, a.strides[0], a.strides[1]),
                                                   (0, b.strides[0], b.strides[1]),
                                                   (0, out.strides[0], out.strides[1]))
    if not ok:
        return False
    _gemm(address, ROW_MAJOR, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, out, ldc)
    return True


@jit(signatures=_SIG_3D)
def gemm_3d(address, a, b, out, alpha, beta):
    """``gemm_2d`` for stacks a (n, M, K), b (n, K, N), out (n, M, N), through ``cblas_?gemm_batch_strided``."""
    n, M, K = a.shape
    N = b.shape[2]
    ok, ta, lda, tb, ldb, ldc, sa, sb, sc = gemm_args(M, K, N, n, True, a.itemsize, a.strides, b.strides,
                                                      out.strides)
    if not ok:
        return False
    _gemm_batch(address, ROW_MAJOR, ta, tb, M, N, K, alpha, a, lda, sa, b, ldb, sb, beta, out, ldc, sc, n)
    return True


@jit(signatures=_SIG_4D)
def gemm_4d(address, a, b, out, alpha, beta):
    """``gemm_2d`` for stacks of stacks a (n1, n2, M, K), b (n1, n2, K, N), out (n1, n2, M, N) of any batch
    strides (attention's heads read and written in place in (B, T, H, D) arrays), through ``cblas_?gemm_batch``
    with one pointer per matrix."""
    n1, n2, M, K = a.shape
    N = b.shape[3]
    ok, ta, lda, tb, ldb, ldc = stacks_args(M, K, N, n1, n2, a.itemsize, a.strides, b.strides, out.strides)
    if not ok:
        return False
    count = n1 * n2
    ptrs = np.empty((3, count), dtype=np.intp)  # a, b, out: each matrix's first element
    for i in range(n1):
        for j in range(n2):
            ptrs[0, i * n2 + j] = a.ctypes.data + i * a.strides[0] + j * a.strides[1]
            ptrs[1, i * n2 + j] = b.ctypes.data + i * b.strides[0] + j * b.strides[1]
            ptrs[2, i * n2 + j] = out.ctypes.data + i * out.strides[0] + j * out.strides[1]
    ints = np.array([ta, tb, M, N, K, lda, ldb, ldc, count], dtype=np.int32)  # the group's MKL_INTs
    reals = np.empty(2, dtype=a.dtype)
    reals[0], reals[1] = alpha, beta
    # arrays, not addresses: each stays alive through the call (views of the entries MKL reads)
    _gemm_pointers(address, ROW_MAJOR, ints[0:], ints[1:], ints[2:], ints[3:], ints[4:], reals, ptrs[0], ints[5:],
                   ptrs[1], ints[6:], reals[1:], ptrs[2], ints[7:], 1, ints[8:])
    return True
