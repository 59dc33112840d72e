"""Scalar math for the CPU kernels, written so that LLVM vectorizes the loops that call it.

Numba compiles ``np.exp`` and ``np.tanh`` on float32 to calls into the C library, one element at a time
(about 5x slower than NumPy's AVX-512 loops). ``exp`` here is the Cephes ``expf`` algorithm in plain
arithmetic instead, and ``tanh`` and the normal CDF ``phi_cdf`` are built on it, so a kernel's loop is
vectorized whole. Float64 keeps the C library's functions (exact to rounding; the finite-difference
gradchecks run in float64).

Math of the float32 exp (Cephes expf; max error 2 ulp over the range):
    k = floor(x / ln 2 + 1/2);  r = x - k ln 2            (ln 2 in two parts, so r is exact; |r| <= ln2/2)
    exp(r) = 1 + r + r^2 * P(r)                          (P: degree-5 minimax polynomial)
    exp(x) = exp(r) * 2^k                                (2^k built from its bits: (k + 127) << 23)
x below -87.3 gives 0 (a masked softmax entry: exactly 0, as in NumPy); x above 88.3 gives exp(88.3), which
no caller reaches (softmax exponents are <= 0; tanh saturates long before).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from . import jit

OVERLOAD = {"error_model": "numpy"}  # compiled into the calling kernel (and cached with it)

LOG2E = 1.4426950408889634
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 = LN2_HI + LN2_LO; LN2_HI has 9 significant bits
EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
EXP_LO, EXP_HI = -87.3, 88.3
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
# Abramowitz & Stegun 7.1.26, as in ops/gelu.py: erfc(u) = t P(t) exp(-u^2), t = 1 / (1 + p u), u >= 0
ERFC_P = 0.3275911
ERFC_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


@intrinsic
def _pow2_float32(typingctx, k):
    """2^k for a whole-valued float32 k in [-126, 127]: the float32 with exponent bits k + 127, built as
    ``bitcast((int32(k) + 127) << 23)`` in LLVM IR (numba has no bit cast; this one vectorizes)."""
    if k != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(types.float32), codegen


@jit(fastmath={"contract"})  # fused multiply-adds; no reassociation (it would undo the two-part ln 2)
def exp_float32(x):
    """exp(x) for a float32 x (see the module docstring)."""
    f = np.float32
    xc = min(max(x, f(EXP_LO)), f(EXP_HI))
    k = np.floor(xc * f(LOG2E) + f(0.5))
    r = xc - k * f(LN2_HI)
    r = r - k * f(LN2_LO)
    p = f(EXP_P[0])
    for c in EXP_P[1:]:
        p = p * r + f(c)
    e = p * (r * r) + r + f(1.0)
    e = e * _pow2_float32(k)
    e = f(0.0) if x < f(EXP_LO) else e
    return x if x != x else e  # NaN stays NaN


def exp(x):
    """exp(x): ``exp_float32`` for float32, the C library's for float64."""
    return np.exp(x)


@overload(exp, jit_options=OVERLOAD)
def _exp_overload(x):
    if x == types.float32:
        return lambda x: exp_float32(x)
    return lambda x: np.exp(x)


def tanh(x):
    """tanh(x): 1 - 2 / (1 + exp(2x)) on float32 (absolute error ~1e-7), the C library's for float64."""
    return np.tanh(x)


@overload(tanh, jit_options=OVERLOAD)
def _tanh_overload(x):
    if x == types.float32:
        return lambda x: np.float32(1.0) - np.float32(2.0) / (np.float32(1.0) + exp_float32(x + x))
    return lambda x: np.tanh(x)


def phi_cdf(x):
    """Phi(x) = 0.5 * (1 + erf(x / sqrt(2))), the standard normal CDF."""
    return 0.5 * (1.0 + math.erf(x * INV_SQRT_2))


@overload(phi_cdf, jit_options=OVERLOAD)
def _phi_cdf_overload(x):
    if x == types.float32:
        return lambda x: _phi_cdf_float32(x)
    return lambda x: 0.5 * (1.0 + math.erf(x * INV_SQRT_2))


@jit(fastmath={"contract"})
def _phi_cdf_float32(x):
    """Phi(x) by A&S 7.1.26 (max error 3e-7, as ops/gelu.py's NumPy float32 path):
    h = 0.5 * t * P(t) * exp(-x^2 / 2), t = 1 / (1 + p |x| / sqrt(2));  Phi = h for x < 0, 1 - h for x >= 0."""
    f = np.float32
    t = f(1.0) / (f(1.0) + f(ERFC_P * INV_SQRT_2) * abs(x))
    h = f(0.5 * ERFC_A[4])
    for a in ERFC_A[3::-1]:
        h = h * t + f(0.5 * a)
    h = h * t * exp_float32(f(-0.5) * x * x)
    return h if x < f(0.0) else f(1.0) - h


def cast(c, like):
    """The constant ``c`` in the float type of ``like``: float32 kernels stay float32, and float64 kernels
    keep the constant's full precision."""
    return c


@overload(cast, jit_options=OVERLOAD)
def _cast_overload(c, like):
    if like == types.float32:
        return lambda c, like: np.float32(c)
    return lambda c, like: np.float64(c)


@intrinsic
def _order_key(typingctx, x):
    """An integer that orders like the float ``x``: its IEEE bits, with the magnitude bits flipped for
    negative x (sign-magnitude to two's complement). -inf < ... < -0 < 0 < ... < inf < NaN keep their order."""
    if x not in (types.float32, types.float64):
        return None
    width = x.bitwidth
    integer = types.int32 if width == 32 else types.int64

    def codegen(context, builder, signature, args):
        return _flip_magnitude(builder, builder.bitcast(args[0], ir.IntType(width)), width)

    return integer(x), codegen


@intrinsic
def _from_order_key(typingctx, key):
    """The float whose ``_order_key`` is ``key`` (the flip undoes itself)."""
    if key not in (types.int32, types.int64):
        return None
    width = key.bitwidth
    real = types.float32 if width == 32 else types.float64

    def codegen(context, builder, signature, args):
        bits = _flip_magnitude(builder, args[0], width)
        return builder.bitcast(bits, ir.FloatType() if width == 32 else ir.DoubleType())

    return real(key), codegen


def _flip_magnitude(builder, bits, width):
    """bits ^ ((bits >> (width - 1)) & 0x7F..F): all-ones sign extension selects the negative numbers."""
    integer = ir.IntType(width)
    sign = builder.ashr(bits, ir.Constant(integer, width - 1))
    return builder.xor(bits, builder.and_(sign, ir.Constant(integer, (1 << (width - 1)) - 1)))


@jit(inline="always")  # called once per row: a call would pass the array (reference counts and all)
def row_max(x, i, n):
    """max(x[i, :n]) for n >= 1, exact, with NaN (of either sign) propagated as in NumPy.

    LLVM does not vectorize a running max of floats (its NaN rules), but it does vectorize one of integers:
    the max runs over ``_order_key(x)``, which orders like x, and maps back (4x faster than 16 running float
    maxima). A NaN's key lies above +inf (positive sign bit) or below -inf (negative): the first gives a NaN
    max, the second is skipped here and brings its row to NaN through the caller's exp(x - max)."""
    top = _order_key(x[i, 0])
    for j in range(1, n):
        key = _order_key(x[i, j])
        top = key if key > top else top
    return _from_order_key(top)
