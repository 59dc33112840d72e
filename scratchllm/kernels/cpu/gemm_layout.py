"""MKL's GEMM layouts: how a matrix product's operands, given by their byte strides, are described to CBLAS
(transposes, leading dimensions, batch strides), and whether the out matrices are apart. Plain arithmetic, used
by ``scratchllm/kernels/blas.py`` (its ctypes path) and compiled into ``gemm.py``'s callers by Numba (the same
functions)."""

from __future__ import annotations

ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS enums


def _operand(s0, s1, rows, cols, step):
    """(transpose flag, leading dimension) that describe a (rows, cols) matrix with byte strides (s0, s1) to
    row-major CBLAS, or (0, 0) when they fit neither a row-major nor a transposed row-major layout."""
    if (s1 == step or cols == 1) and s0 % step == 0 and s0 // step >= max(1, cols):
        return _NO_TRANS, s0 // step
    if (s0 == step or rows == 1) and s1 % step == 0 and s1 // step >= max(1, rows):
        return _TRANS, s1 // step
    return 0, 0


def gemm_args(M, K, N, n, stacked, step, sa, sb, sc):
    """The CBLAS description of out (n, M, N) = a (n, M, K) @ b (n, K, N) from each operand's byte strides
    (batch, row, column) and the item size ``step``: ``(ok, trans a, lda, trans b, ldb, ldc, batch stride of
    a, of b, of out)`` in elements; ok is False when some layout fits no CBLAS description, the out matrices
    would overlap, or a number passes a C int. ``stacked``: 3-D operands (MKL's strided batch GEMM, which
    checks the batch strides even for one matrix); 2-D operands pass batch strides of 0. Plain arithmetic:
    the compiled caller (``kernels/cpu/gemm.py``) runs this same function under Numba."""
    ta, lda = _operand(sa[1], sa[2], M, K, step)
    tb, ldb = _operand(sb[1], sb[2], K, N, step)
    ldc, batch_a, batch_b, batch_c = sc[1] // step, sa[0] // step, sb[0] // step, sc[0] // step
    ok = (ta != 0 and tb != 0 and sc[2] == step and sc[1] % step == 0 and ldc >= N
          and max(M, N, K, n, lda, ldb, ldc, batch_a, batch_b, batch_c) < 2**31)
    if stacked:  # whole-element batch strides, not negative, and out matrices apart
        ok = ok and (sa[0] % step == 0 and sb[0] % step == 0 and sc[0] % step == 0 and batch_a >= 0
                     and batch_b >= 0 and batch_c >= M * ldc)
    return ok, ta, lda, tb, ldb, ldc, batch_a, batch_b, batch_c


def apart(M, N, ldc, n_hi, s_hi, n_lo, s_lo):
    """Whether the n_hi x n_lo out matrices (M, N) (row stride ``ldc``) at element offsets i * s_hi + j * s_lo
    cannot overlap: side by side within the rows (attention's heads in a (B, T, H, D) array) or one after the
    other, each group of n_lo within one stretch of s_hi. A sufficient test: other layouts go to NumPy."""
    if s_hi < 0 or s_lo < 0:
        return False
    one = (M - 1) * ldc + N  # elements from a matrix's first to past its last
    if n_lo == 1:
        group = one
    elif s_lo >= N and (n_lo - 1) * s_lo + N <= ldc:  # side by side in the same rows
        group = (M - 1) * ldc + (n_lo - 1) * s_lo + N
    elif s_lo >= one:  # one after the other
        group = (n_lo - 1) * s_lo + one
    else:
        return False
    return n_hi == 1 or s_hi >= group


def stacks_args(M, K, N, n_hi, n_lo, step, sa, sb, sc):
    """``gemm_args`` for stacks of stacks (n_hi, n_lo, M, K) @ (n_hi, n_lo, K, N) -> (n_hi, n_lo, M, N) of any
    batch strides (``sa``, ``sb``, ``sc``: the four byte strides of each), which MKL's pointer-array batch GEMM
    takes (its strided one needs each out matrix after the last): ``(ok, trans a, lda, trans b, ldb, ldc)``,
    the operands' batch strides then read from the arrays themselves."""
    ta, lda = _operand(sa[2], sa[3], M, K, step)
    tb, ldb = _operand(sb[2], sb[3], K, N, step)
    ldc = sc[2] // step
    ok = (ta != 0 and tb != 0 and sc[3] == step and sc[2] % step == 0 and ldc >= N
          and sa[0] % step == 0 and sa[1] % step == 0 and sb[0] % step == 0 and sb[1] % step == 0
          and sc[0] % step == 0 and sc[1] % step == 0 and max(M, N, K, n_hi * n_lo, lda, ldb, ldc) < 2**31
          and apart(M, N, ldc, n_hi, sc[0] // step, n_lo, sc[1] // step))
    return ok, ta, lda, tb, ldb, ldc
