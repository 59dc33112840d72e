"""The flat-buffer kernels (kernels/cpu/flat.py): the shards' gradient sum and clip_grad_norm's norm and scale
on every core, against NumPy, and where they must step aside."""

import numpy as np
import pytest

pytest.importorskip("numba")

from scratchllm.kernels import threads  # noqa: E402
from scratchllm.kernels import cpu  # noqa: E402
from scratchllm.kernels.cpu import flat  # noqa: E402
from scratchllm.optim import clip_grad_norm  # noqa: E402


@pytest.fixture
def small_pieces(monkeypatch):
    """The kernels on (whatever SCRATCHLLM_KERNELS says), prange from 64 elements, in pieces of 7 (a short last
    piece); skipped without Numba's TBB layer."""
    monkeypatch.delenv("SCRATCHLLM_KERNELS", raising=False)
    if not cpu._tbb_layer() or threads.cpu_threads() < 2:
        pytest.skip("Numba's TBB threading layer on 2+ CPUs is needed for the prange kernels")
    monkeypatch.setattr(cpu, "PRANGE_MIN", 64)
    monkeypatch.setattr(cpu, "PRANGE_PIECE", 7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_kernel_matches_numpy(small_pieces, dtype):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(1000).astype(dtype), rng.standard_normal(1000).astype(dtype)
    out = x.copy()
    assert flat.add_into(out, y)
    np.testing.assert_array_equal(out, x + y)  # elementwise: the same bits
    total = flat.norm(x)
    assert total.dtype == dtype
    np.testing.assert_allclose(total, np.sqrt(np.sum(x.astype(np.float64) ** 2)), rtol=1e-7 if dtype == np.float32
                               else 1e-15)
    scaled = x.copy()
    assert flat.scale(scaled, 0.3)
    np.testing.assert_array_equal(scaled, x * dtype(0.3))


def test_the_norm_is_the_pieces_sums_in_order(small_pieces):
    """Whatever the thread count: one float64 sum per fixed piece, then those sums in piece order."""
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    piece = cpu.prange_rows(x.size, x.size)
    total = 0.0
    for k in range(0, x.size, piece):
        total += flat._sum_squares(x[k:k + piece])
    assert flat._sum_squares_par(x, piece) == total


def test_where_the_kernels_step_aside(small_pieces):
    x = np.ones(1000, np.float32)
    with threads.in_line():  # a batch shard has its core: NumPy's code there
        assert flat.norm(x) is None and not flat.scale(x, 2.0) and not flat.add_into(x, x.copy())
    assert flat.norm(np.ones(40, np.float32)) is None  # below PRANGE_MIN
    assert flat.norm(np.ones(2000, np.float32)[::2]) is None  # not contiguous
    assert not flat.add_into(x, x)  # the same memory: the kernel's loop may not read what it writes
    assert not flat.add_into(x, np.ones(1000, np.float64))  # mixed dtypes
    assert (x == 1).all()


@pytest.mark.parametrize("clipped", [True, False])
def test_clip_grad_norm_on_a_flat_buffer_matches_the_numpy_path(small_pieces, monkeypatch, clipped):
    buf = np.random.default_rng(2).standard_normal(1000).astype(np.float32)
    grads = {"w": buf[:600].reshape(20, 30), "b": buf[600:]}  # one flat buffer, as GPT's
    reference = {n: g.copy() for n, g in grads.items()}
    max_norm = 1.0 if clipped else 1e6
    total = clip_grad_norm(grads, max_norm)
    monkeypatch.setenv("SCRATCHLLM_KERNELS", "0")
    ref_total = clip_grad_norm(reference, max_norm)
    assert total == pytest.approx(ref_total, rel=1e-6)
    for n in grads:
        np.testing.assert_allclose(grads[n], reference[n], rtol=2e-6, atol=0)
    if not clipped:
        np.testing.assert_array_equal(buf[600:], reference["b"])
