"""Every CUDA kernel of scratchllm/kernels/cuda/, run on the host emulator through its own Python wrapper, against
its textbook op: both dtypes, rows that are not multiples of the warp or the block, C = 1, V = 50257, NaN and
Inf rows, ignore_index, Tk > T; the optimizers over several steps. What only a GPU shows (timing, the device's
libm, the memory model) is in docs/gpu.md."""

import numpy as np
import pytest

from scratchllm import ops
from scratchllm.kernels.cuda import attention as cuda_attention
from scratchllm.kernels.cuda import cross_entropy as cuda_ce
from scratchllm.kernels.cuda import flash_attention as cuda_flash
from scratchllm.kernels.cuda import gelu as cuda_gelu
from scratchllm.kernels.cuda import layernorm as cuda_ln
from scratchllm.kernels.cuda import softmax as cuda_softmax

pytestmark = pytest.mark.cuda_emu
DTYPES = ("float32", "float64")
TOL = {"float32": 2e-5, "float64": 1e-12}


def close(got, want, dtype, what=""):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, what
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN where the textbook has none, or not"
    fin = ~np.isnan(want)
    scale = max(1.0, float(np.abs(want[fin]).max())) if fin.any() else 1.0
    err = float(np.abs(got[fin] - want[fin]).max()) / scale if fin.any() else 0.0
    assert err <= TOL[dtype], f"{what}: max error {err:.3g} relative"


def rand(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------------------ layernorm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, C", [(1, 1), (7, 33), (9, 100), (130, 31)])
def test_layernorm_forward_and_backward_equal_the_textbook(emu, dtype, N, C):
    x, w, b, dout = rand((N, C), dtype, 1), rand(C, dtype, 2), rand(C, dtype, 3), rand((N, C), dtype, 4)
    out, cache = cuda_ln.layernorm_forward(x, w, b)
    ref, ref_cache = ops.layernorm_forward(x, w, b)
    close(out, ref, dtype, "out")
    for got, want, name in zip(cuda_ln.layernorm_backward(dout, cache), ops.layernorm_backward(dout, ref_cache),
                               ("dx", "dw", "db")):
        close(got, want, dtype, name)
    for got, want in zip(ops.layernorm_backward(dout, cache), ops.layernorm_backward(dout, ref_cache)):
        close(got, want, dtype, "the kernel's cache in the textbook's backward")


# -------------------------------------------------------------------------------------------- softmax
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", [((5, 1), -1), ((3, 7, 33), -1), ((4, 65), 0), ((2, 70, 3), 1)])
def test_softmax_forward_and_backward_equal_the_textbook(emu, dtype, shape, axis):
    x, dout = rand(shape, dtype, 1), rand(shape, dtype, 2)
    y, cache = cuda_softmax.softmax_forward(x, axis)
    ref, ref_cache = ops.softmax_forward(x, axis)
    close(y, ref, dtype, "y")
    close(cuda_softmax.softmax_backward(dout, cache)[0], ops.softmax_backward(dout, ref_cache)[0], dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_of_rows_with_nan_and_inf_is_numpys(emu, dtype):
    """NaN in, NaN out (the online softmax used to drop a NaN seen before the first finite value: defect 1)."""
    x = rand((6, 64), dtype)
    x[0, :4] = [1, np.nan, 2, 3]
    x[1, [5, 40]] = np.nan  # two NaNs in a 64-wide row: every output NaN
    x[2, :] = np.nan
    x[3, 7] = np.inf
    x[4, :] = -np.inf  # all masked: 0 / 0
    x[5, 9] = -np.inf
    with np.errstate(invalid="ignore"):
        want = ops.softmax_forward(x)[0]
    got = cuda_softmax.softmax_forward(x)[0]
    assert np.isnan(got[:5]).all() and np.isnan(want[:5]).all()
    close(got, want, dtype, "rows with NaN, Inf, all -inf")


def test_softmax_1_nan_2_3_is_all_nan(emu):
    got = cuda_softmax.softmax_forward(np.array([[1, np.nan, 2, 3]]))[0]
    assert np.isnan(got).all(), got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, Tk, causal", [(5, 5, True), (33, 40, True), (7, 70, True), (9, 9, False)])
def test_scaled_causal_softmax_is_attentions_scale_mask_softmax(emu, dtype, T, Tk, causal):
    att = rand((2, 3, T, Tk), dtype)
    scale = 0.125
    p, _ = cuda_softmax.scaled_causal_softmax_forward(att, scale, causal)
    a = att * scale
    if causal:
        a = np.where(np.triu(np.ones((T, Tk), bool), k=Tk - T + 1), -np.inf, a)
    close(p, ops.softmax_forward(a)[0], dtype, "p")


# -------------------------------------------------------------------------------------- cross-entropy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, V", [(3, 50257), (9, 33), (4, 1)])
def test_cross_entropy_equals_the_textbook(emu, dtype, N, V):
    logits = rand((N, V), dtype, 1) * 3
    targets = np.random.default_rng(2).integers(0, V, N)
    targets[0] = -1  # ignored
    loss, cache = cuda_ce.cross_entropy_forward(logits, targets)
    ref, ref_cache = ops.cross_entropy_forward(logits, targets)
    close(loss, ref, dtype, "loss")
    dout = np.asarray(rand((), dtype, 3))
    close(cuda_ce.cross_entropy_backward(dout, cache)[0], ops.cross_entropy_backward(dout, ref_cache)[0], dtype,
          "dlogits")
    close(ops.cross_entropy_backward(dout, cache)[0], ops.cross_entropy_backward(dout, ref_cache)[0], dtype,
          "the kernel's cache in the textbook's backward")


def test_cross_entropy_with_every_target_ignored_is_zero(emu):
    logits = rand((4, 9), "float64")
    loss, cache = cuda_ce.cross_entropy_forward(logits, np.full(4, -1))
    assert float(loss) == 0.0
    assert not cuda_ce.cross_entropy_backward(np.float64(1.0), cache)[0].any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_nan_logit_away_from_the_target_makes_the_loss_nan(emu, dtype):
    """Defect 1 in cross-entropy: the loss was finite (5.17) where NumPy's is NaN."""
    logits = rand((2, 64), dtype)
    logits[0, 10] = np.nan
    loss, _ = cuda_ce.cross_entropy_forward(logits, np.array([3, 4]))
    assert np.isnan(loss)


def test_an_out_of_range_target_gives_a_nan_loss_and_the_textbooks_cache(emu):
    """Defect 4: the kernel's cache kept the target 9 where the op's holds 0; the textbook backward handed that
    cache then subtracted at a wrapped column."""
    logits = rand((3, 5), "float64")
    targets = np.array([1, 9, -1])
    loss, cache = cuda_ce.cross_entropy_forward(logits, targets)
    assert np.isnan(loss)
    assert cache[2].tolist() == [1, 0, 0]  # t_safe as the op makes it on CuPy: bad and ignored rows read column 0
    d_kernel = cuda_ce.cross_entropy_backward(np.float64(1.0), cache)[0]
    d_textbook = ops.cross_entropy_backward(np.float64(1.0), cache)[0]
    np.testing.assert_allclose(d_kernel, d_textbook, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------- GELU
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_equals_the_textbook(emu, dtype, approximate):
    x, dout = rand((3, 37), dtype, 1) * 3, rand((3, 37), dtype, 2)
    out, cache = cuda_gelu.gelu_forward(x, approximate)
    ref, ref_cache = ops.gelu_forward(x, approximate)
    close(out, ref, dtype, "out")
    close(cuda_gelu.gelu_backward(dout, cache)[0], ops.gelu_backward(dout, ref_cache)[0], dtype, "dx")


# ------------------------------------------------------------------------------------------ attention
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, Tk, causal", [(9, 9, True), (5, 12, True), (6, 6, False)])
def test_attention_equals_the_textbook(emu, dtype, T, Tk, causal):
    q, k, v = rand((2, 3, T, 8), dtype, 1), rand((2, 3, Tk, 8), dtype, 2), rand((2, 3, Tk, 8), dtype, 3)
    dout = rand((2, 3, T, 8), dtype, 4)
    out, cache = cuda_attention.attention_forward(q, k, v, causal)
    ref, ref_cache = ops.attention_forward(q, k, v, causal)
    close(out, ref, dtype, "out")
    for got, want, name in zip(cuda_attention.attention_backward(dout, cache),
                               ops.attention_backward(dout, ref_cache), ("dq", "dk", "dv")):
        close(got, want, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, Tk, block", [(10, 10, 4), (7, 13, 3), (5, 5, 64)])
def test_attention_blocked_equals_the_textbook(emu, dtype, T, Tk, block):
    q, k, v = rand((1, 2, T, 4), dtype, 1), rand((1, 2, Tk, 4), dtype, 2), rand((1, 2, Tk, 4), dtype, 3)
    dout = rand((1, 2, T, 4), dtype, 4)
    out, cache = cuda_attention.attention_blocked_forward(q, k, v, block=block)
    ref, ref_cache = ops.attention_blocked_forward(q, k, v, block=block)
    close(out, ref, dtype, "out")
    for got, want, name in zip(cuda_attention.attention_blocked_backward(dout, cache),
                               ops.attention_blocked_backward(dout, ref_cache), ("dq", "dk", "dv")):
        close(got, want, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, Tk, D, causal", [(70, 70, 8, True), (5, 83, 3, True), (33, 40, 1, False), (1, 1, 4, True)])
def test_flash_attention_equals_the_textbook(emu, dtype, T, Tk, D, causal):
    """Query rows over two blocks of 64 threads, key tiles of 16 that do not divide Tk, Tk > T, D = 1."""
    q, k, v = rand((2, 1, T, D), dtype, 1), rand((2, 1, Tk, D), dtype, 2), rand((2, 1, Tk, D), dtype, 3)
    dout = rand((2, 1, T, D), dtype, 4)
    out, cache = cuda_flash.flash_attention_forward(q, k, v, causal)
    ref, ref_cache = ops.flash_attention_forward(q, k, v, causal)
    close(out, ref, dtype, "out")
    close(cache[4], ref_cache[4], dtype, "lse")
    want = ops.flash_attention_backward(dout, ref_cache)
    for grads in (cuda_flash.flash_attention_backward(dout, cache), cuda_flash.flash_attention_backward(dout, ref_cache),
                  ops.flash_attention_backward(dout, cache)):
        for got, w, name in zip(grads, want, ("dq", "dk", "dv")):
            close(got, w, dtype, name)


def test_flash_attention_with_a_nan_score_is_nan_in_that_row_only(emu):
    q, k, v = rand((1, 1, 6, 4), "float64", 1), rand((1, 1, 6, 4), "float64", 2), rand((1, 1, 6, 4), "float64", 3)
    k[0, 0, 2, 1] = np.nan  # key 2: seen by queries 2.. (causal)
    out, _ = cuda_flash.flash_attention_forward(q, k, v)
    with np.errstate(invalid="ignore"):
        ref, _ = ops.flash_attention_forward(q, k, v)
    close(out, ref, "float64", "out with a NaN key")
    assert np.isnan(out[0, 0, 2:]).all() and not np.isnan(out[0, 0, :2]).any()
