"""The emulator itself: it fails a planted wrong shuffle offset, reports a shuffle in a diverged warp and a
launch whose arguments a GPU would misread; the compiled kernel objects are looked up once (defect 3); the fused
optimizers over several steps equal the textbook updates."""

import numpy as np
import pytest

from scratchllm import ops
from scratchllm.kernels.cuda import _common
from scratchllm.kernels.cuda import optim as cuda_optim
from scratchllm.kernels.cuda import softmax as cuda_softmax

pytestmark = pytest.mark.cuda_emu


def test_a_planted_wrong_shuffle_offset_is_caught(emu, monkeypatch):
    """warp_sum with offsets 8, 4, 2, 1 (the first butterfly step dropped) sums half the warp: the softmax
    backward's row totals are wrong, and the comparison with the textbook fails."""
    good = cuda_softmax.CUDA_SOURCE
    planted = good.replace("for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync",
                           "for (int offset = 8; offset > 0; offset >>= 1) v += __shfl_xor_sync")
    assert planted != good
    x, dout = np.random.default_rng(0).standard_normal((2, 2, 64)), np.random.default_rng(1).standard_normal((2, 2, 64))
    y, cache = ops.softmax_forward(x)
    want = ops.softmax_backward(dout, cache)[0]
    np.testing.assert_allclose(cuda_softmax.softmax_backward(dout, cache)[0], want, rtol=1e-12, atol=1e-14)
    monkeypatch.setattr(cuda_softmax, "CUDA_SOURCE", planted)
    got = cuda_softmax.softmax_backward(dout, cache)[0]
    assert np.abs(got - want).max() > 1e-3  # the planted bug is visible


def test_a_shuffle_in_a_diverged_warp_is_reported(emu):
    source = _common.PREAMBLE + r"""
template <typename T>
__global__ void diverged(T* out, int n) {
    if ((int)threadIdx.x >= n) return;  // some lanes of the warp leave, the rest shuffle with a full mask
    out[threadIdx.x] = warp_sum(T(1));
}
"""
    k = emu.RawModule(code=source, name_expressions=("diverged<double>",)).get_function("diverged<double>")
    out = np.zeros(32)
    k((1,), (32,), (out, np.int32(32)))
    assert (out == 32).all()  # every lane present: the sum of 32 ones
    with pytest.raises(RuntimeError, match="__shfl_xor_sync with a full mask.*undefined on a GPU"):
        k((1,), (32,), (out, np.int32(20)))


def test_arguments_a_gpu_would_misread_are_refused(emu):
    k = _common.kernel(cuda_softmax.CUDA_SOURCE, cuda_softmax.NAME_EXPRESSIONS, "softmax_forward", np.float32)
    x, y = np.ones((2, 8), np.float32), np.empty((2, 8), np.float32)
    k((1,), (256,), (x, y, np.int64(2), np.int32(8)))
    np.testing.assert_allclose(y, 1 / 8)
    with pytest.raises(TypeError, match=r"argument 2 \(N\) must be a NumPy int64 scalar \(CUDA reads 8 bytes\)"):
        k((1,), (256,), (x, y, np.int32(2), np.int32(8)))  # N is a long long: 4 bytes would be misread
    with pytest.raises(TypeError, match=r"argument 0 \(x\) must be a C-contiguous float32 array"):
        k((1,), (256,), (x.astype(np.float64), y, np.int64(2), np.int32(8)))
    with pytest.raises(TypeError, match="C-contiguous"):
        k((1,), (256,), (np.ones((8, 2), np.float32).T, y, np.int64(2), np.int32(8)))


def test_a_kernel_is_looked_up_once_not_at_every_launch(emu):
    """Defect 3: _common.kernel() built a new RawKernel object at every launch."""
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    first = _common.kernel(cuda_softmax.CUDA_SOURCE, cuda_softmax.NAME_EXPRESSIONS, "softmax_forward", x.dtype)
    for _ in range(3):
        cuda_softmax.softmax_forward(x)
    again = _common.kernel(cuda_softmax.CUDA_SOURCE, cuda_softmax.NAME_EXPRESSIONS, "softmax_forward", x.dtype)
    assert again is first and first.launches == 3


def _textbook_and_fused(monkeypatch, cls, dtype, steps, **hyper):
    """The optimizer's textbook update (its xp code, no fused kernel) and the fused CUDA kernel, from the same
    start, ``steps`` steps on the same gradients; returns both parameters."""
    import scratchllm.optim as optim
    import scratchllm.optim.base as base

    for module in (optim, base):
        monkeypatch.setattr(module, "_fused_optim", lambda p: None)  # the textbook update
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(37).astype(dtype)
    grads = [rng.standard_normal(37).astype(dtype) for _ in range(steps)]
    p_ref = {"w": p0.copy()}
    opt = cls(p_ref, **hyper)
    h = opt.param_groups[0]
    for g in grads:
        opt.step({"w": g})
    p = p0.copy()
    state = {k: np.zeros_like(p) for k in ("m", "v", "v_max", "s")}
    for t, g in enumerate(grads, start=1):
        if cls.__name__ == "Adagrad":
            cuda_optim.adagrad_step(p, g, state["s"], t, h)
        else:
            cuda_optim.adam_step(p, g, state["m"], state["v"], state["v_max"] if h["amsgrad"] else None, t, h,
                                 cls.__name__ == "AdamW")
    return p_ref["w"], p


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, hyper", [
    ("Adam", dict(lr=1e-2, weight_decay=0.1)),
    ("Adam", dict(lr=1e-2, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, betas=(0.8, 0.9))),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.05)),
])
def test_fused_optimizers_over_several_steps_equal_the_textbook(emu, monkeypatch, dtype, name, hyper):
    import scratchllm.optim as optim

    want, got = _textbook_and_fused(monkeypatch, getattr(optim, name), dtype, 5, **hyper)
    tol = 1e-6 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert not np.array_equal(got, np.random.default_rng(0).standard_normal(37).astype(dtype))  # it moved


KERNEL_AUTHOR = r"""
// a kernel author's: row sums by __shfl_down_sync, one warp per row (not a template)
__global__ void row_sums(const float* x, float* out, int n, int C) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= n) return;
    float s = 0;
    for (int j = lane; j < C; j += 32) s += x[row * C + j];
    for (int d = 16; d > 0; d >>= 1) s += __shfl_down_sync(0xffffffffu, s, d);
    if (lane == 0) out[row] = s;
}

// every block adds its thread count into one total
__global__ void count_threads(float* total) { atomicAdd(total, 1.0f); }

// lane 0 waits at the block's barrier, the rest of its warp at a shuffle that needs lane 0: neither can finish
__global__ void divergent_barrier(float* out) {
    float v = 1;
    if (threadIdx.x == 0) __syncthreads();
    else v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
"""


def test_a_kernel_authors_kernel_with_shfl_down_and_atomics(emu):
    m = emu.RawModule(code=KERNEL_AUTHOR, name_expressions=("row_sums", "count_threads"))
    x = np.random.default_rng(0).standard_normal((5, 70)).astype(np.float32)
    out = np.zeros(5, np.float32)
    m.get_function("row_sums")(2, 128, (x, out, np.int32(5), np.int32(70)))  # CuPy's int grid and block
    np.testing.assert_allclose(out, x.sum(axis=1), rtol=1e-5)
    total = np.zeros(1, np.float32)
    m.get_function("count_threads")((3,), (64,), (total,))
    assert total[0] == 3 * 64
    with pytest.raises(ValueError, match="no __global__ function 'nope'"):
        emu.RawModule(code=KERNEL_AUTHOR, name_expressions=("nope",))
    with pytest.raises(NotImplementedError, match="dynamic shared memory"):
        m.get_function("count_threads")((1,), (32,), (total,), shared_mem=128)


def test_a_deadlock_fails_the_launch_and_says_where_the_threads_wait(emu, monkeypatch):
    monkeypatch.setenv("SCRATCHLLM_EMU_TIMEOUT_S", "1")
    k = emu.RawModule(code=KERNEL_AUTHOR, name_expressions=("divergent_barrier",)).get_function("divergent_barrier")
    with pytest.raises(RuntimeError, match=r"deadlock in block \(0, 0, 0\): after 1 s, 1 threads wait at "
                                           r"__syncthreads and 31 at warp shuffles"):
        k((1,), (32,), (np.zeros(32, np.float32),))


def test_a_diverged_shuffle_is_reported_every_time_with_where(emu):
    source = _common.PREAMBLE + r"""
__global__ void one_shuffle(double* out, int n) {
    if ((int)threadIdx.x >= n) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0, 1);
}
"""
    k = emu.RawModule(code=source, name_expressions=("one_shuffle",)).get_function("one_shuffle")
    for _ in range(20):  # one shuffle only: the check must not depend on which lanes happen to have left yet
        with pytest.raises(RuntimeError, match=r"warp 0 of block \(0, 0, 0\): 12 of its 32 lanes have returned"):
            k((1,), (32,), (np.zeros(32), np.int32(20)))
    with pytest.raises(RuntimeError, match="a block of 48 threads \\(not a multiple of 32\\) leaves its last warp 16"):
        k((1,), (48,), (np.zeros(48), np.int32(48)))
