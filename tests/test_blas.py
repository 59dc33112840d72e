"""blas.matmul: MKL's GEMM inside single-core shards (when installed), NumPy's everywhere else."""

import os
import subprocess
import sys

import numpy as np
import pytest

from scratchllm.kernels import blas
from scratchllm.kernels.threads import in_line

needs_mkl = pytest.mark.skipif(not blas.status()[0], reason=f"MKL not usable: {blas.status()[1]}")


@pytest.fixture(params=["compiled", "ctypes"])
def path(request, monkeypatch):
    """Each test twice: MKL called from compiled code (kernels/cpu/gemm.py, when Numba imports) and through
    ctypes."""
    if request.param == "ctypes":
        monkeypatch.setattr(blas, "_compiled", lambda lib: None)
    elif blas.status()[0] and blas._compiled(blas._library()[0]) is None:
        pytest.skip("Numba does not import: no compiled GEMM caller")
    return request.param


def layouts(rng, rows, cols, dtype):
    """The same (rows, cols) matrix as: row-major, transposed row-major, and a row-major slice of a wider
    array (leading dimension > cols)."""
    m = rng.standard_normal((rows, cols)).astype(dtype)
    wide = np.zeros((rows, cols + 3), dtype)
    wide[:, :cols] = m
    return {"C": m, "T": np.ascontiguousarray(m.T).T, "slice": wide[:, :cols]}


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(7, 5, 3), (1, 9, 4), (6, 1, 5), (33, 17, 1), (64, 128, 96)])
def test_every_layout_matches_numpy(M, K, N, dtype, path):
    rng = np.random.default_rng(M * 100 + K * 10 + N)
    A, B = layouts(rng, M, K, dtype), layouts(rng, K, N, dtype)
    expected = A["C"].astype(np.float64) @ B["C"].astype(np.float64)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    with in_line():
        for la, a in A.items():
            for lb, b in B.items():
                out = blas.matmul(a, b)
                assert out.dtype == dtype and out.shape == (M, N) and out.flags.c_contiguous, (la, lb)
                np.testing.assert_allclose(out, expected, **tol, err_msg=f"{la} @ {lb}")


class _Called(Exception):
    pass


class _FakeLib:
    """Stands in for libmkl_rt: any GEMM call raises, so a test sees whether MKL was asked."""

    def __getattr__(self, name):
        def call(*args):
            raise _Called(name)
        return call


def test_mkl_only_inside_single_core_shards_and_only_when_allowed(monkeypatch):
    monkeypatch.setattr(blas, "_library", lambda: (_FakeLib(), None))
    monkeypatch.delenv(blas.ENV_VAR, raising=False)
    a, b = np.ones((4, 3), np.float32), np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(blas.matmul(a, b), a @ b)  # outside a shard: NumPy's multi-threaded BLAS
    with in_line():
        with pytest.raises(_Called, match="cblas_sgemm"):
            blas.matmul(a, b)
        with pytest.raises(_Called, match="cblas_dgemm"):
            blas.matmul(a.astype(np.float64), b.astype(np.float64))
        # what MKL is not given: mixed dtypes, integers, 3-D, empty, and strides of neither layout
        for x, y in ((a, b.astype(np.float64)), (a.astype(np.int64), b.astype(np.int64)),
                     (np.ones((2, 4, 3), np.float32), b), (np.ones((0, 3), np.float32), b),
                     (np.ones((8, 6), np.float32)[::2, ::2], b)):
            np.testing.assert_array_equal(blas.matmul(x, y), x @ y)
        monkeypatch.setenv(blas.ENV_VAR, "0")
        np.testing.assert_array_equal(blas.matmul(a, b), a @ b)
    assert blas.status() == (False, f"{blas.ENV_VAR}=0: NumPy's BLAS everywhere")


def test_without_mkl_everything_is_numpy(monkeypatch):
    monkeypatch.setattr(blas, "_library", lambda: (None, "MKL is not installed"))
    monkeypatch.delenv(blas.ENV_VAR, raising=False)
    a, b = np.arange(12.0).reshape(4, 3), np.arange(6.0).reshape(3, 2)
    with in_line():
        np.testing.assert_array_equal(blas.matmul(a, b), a @ b)
    assert blas.status() == (False, "MKL is not installed")


@needs_mkl
def test_status_says_sequential():
    ok, text = blas.status()
    assert ok and "sequential" in text and "Math Kernel Library" in text


@needs_mkl
def test_transposed_and_sliced_operands_reach_mkl_as_such(monkeypatch):
    """Each layout goes to MKL (not to the NumPy fallback) with the transpose flag and leading dimension
    that describe it."""
    lib, _ = blas._library()
    calls = []

    class Recording:
        def __getattr__(self, name):
            real = getattr(lib, name)

            def call(*args):
                calls.append(args[1:3] + (args[8], args[10]))  # (trans a, trans b, lda, ldb)
                return real(*args)
            return call

    monkeypatch.setattr(blas, "_library", lambda: (Recording(), None))
    rng = np.random.default_rng(0)
    A, B = layouts(rng, 6, 4, np.float32), layouts(rng, 4, 5, np.float32)
    expected = {"C": (blas._NO_TRANS, 4), "T": (blas._TRANS, 6), "slice": (blas._NO_TRANS, 7)}
    expected_b = {"C": (blas._NO_TRANS, 5), "T": (blas._TRANS, 4), "slice": (blas._NO_TRANS, 8)}
    with in_line():
        for la, a in A.items():
            for lb, b in B.items():
                calls.clear()
                np.testing.assert_allclose(blas.matmul(a, b), A["C"] @ B["C"], rtol=1e-5, atol=1e-5)
                assert calls == [(expected[la][0], expected_b[lb][0], expected[la][1], expected_b[lb][1])], (la, lb)


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stacks_out_and_accumulate_match_numpy(dtype, monkeypatch, path):
    """Stacks of matrices go to MKL's strided batch GEMM: transposed views, results written into a strided
    view of a bigger array (``out``), and added to it (``accumulate``, beta = 1)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 7, 4)).astype(dtype)
    k = rng.standard_normal((5, 6, 4)).astype(dtype)  # a @ k^T: a transposed stack
    big = rng.standard_normal((5, 9, 6)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    expected = a @ k.swapaxes(-1, -2)  # (5, 7, 6)
    used = []
    real = blas._gemm
    monkeypatch.setattr(blas, "_gemm", lambda *args: used.append(real(*args)) or used[-1])
    with in_line():
        np.testing.assert_allclose(blas.matmul(a, k.swapaxes(-1, -2)), expected, **tol)
        view = big[:, 1:8]  # (5, 7, 6) rows 1..7 of each matrix: leading dimension 6, batch stride 54
        before = big.copy()
        assert blas.matmul(a, k.swapaxes(-1, -2), out=view) is view
        np.testing.assert_allclose(big[:, 1:8], expected, **tol)
        np.testing.assert_array_equal(big[:, [0, 8]], before[:, [0, 8]])  # nothing written outside the view
        blas.matmul(a, k.swapaxes(-1, -2), out=view, accumulate=True)
        np.testing.assert_allclose(big[:, 1:8], 2 * expected, **tol)
        assert used == [True, True, True]
        # stacks MKL is not given: different batch sizes (NumPy broadcasts: refused before any layout is looked
        # at), and overlapping out matrices (refused by the layout check, with nothing written)
        np.testing.assert_allclose(blas.matmul(a, k[:1].swapaxes(-1, -2)), a @ k[:1].swapaxes(-1, -2), **tol)
        assert used == [True, True, True]
        step = a.itemsize
        overlapping = np.lib.stride_tricks.as_strided(np.zeros(200, dtype), (5, 7, 6), (6 * step, 6 * step, step))
        assert real(blas._library()[0], a, k.swapaxes(-1, -2), overlapping, 0.0) is False
        assert not overlapping.any()


@needs_mkl
def test_layouts_cblas_cannot_describe_are_refused_untouched(path):
    lib = blas._library()[0]
    a, b = np.ones((8, 6), np.float32)[::2, ::2], np.ones((3, 2), np.float32)  # a: strides of neither layout
    out = np.zeros((4, 2), np.float32)
    assert blas._gemm(lib, a, b, out, 0.0) is False and not out.any()
    strided_out = np.zeros((4, 4), np.float32)[:, ::2]  # out's columns apart
    assert blas._gemm(lib, np.ones((4, 3), np.float32), b, strided_out, 0.0) is False and not strided_out.any()
    with in_line():
        np.testing.assert_array_equal(blas.matmul(a, b), a @ b)  # NumPy's product instead


@needs_mkl
def test_stacks_of_one_matrix_with_batch_strides_mkl_refuses_are_numpys(path):
    """MKL checks the batch strides of a stack even when it holds one matrix: a flipped or broadcast stack
    must not reach it (it would print an error and compute nothing)."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((2, 3, 4)).astype(np.float32), rng.standard_normal((1, 4, 5)).astype(np.float32)
    z = np.zeros((3, 5), np.float32)
    with in_line():
        flipped = np.flip(x[:1], 0)  # batch stride negative
        np.testing.assert_allclose(blas.matmul(flipped, y), flipped @ y, rtol=1e-5, atol=1e-6)
        assert blas.matmul(x[:1], y, out=z[None]) is not None  # out's batch stride 0
        np.testing.assert_allclose(z, (x[:1] @ y)[0], rtol=1e-5, atol=1e-6)


@needs_mkl
def test_read_only_and_overlapping_arrays(path):
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((6, 6)).astype(np.float32), rng.standard_normal((6, 6)).astype(np.float32)
    expected = a @ b
    ro_a, ro_b = a.copy(), np.broadcast_to(b, (2, 6, 6))  # read-only operands, one a stack of batch stride 0
    ro_a.flags.writeable = False
    with in_line():
        np.testing.assert_allclose(blas.matmul(ro_a, b), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(blas.matmul(np.stack([a, a]), ro_b), np.stack([expected] * 2), rtol=1e-5,
                                   atol=1e-5)
        with pytest.raises(ValueError, match="read-only"):
            blas.matmul(a, b, out=ro_a)  # as NumPy: never written
        c = a.copy()
        np.testing.assert_allclose(blas.matmul(c, b, out=c), expected, rtol=1e-5, atol=1e-5)  # out is a
        d = b.copy()
        np.testing.assert_allclose(blas.matmul(a, d, out=d, accumulate=True), expected + b, rtol=1e-5, atol=1e-5)


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stacks_of_stacks_read_and_write_attention_layouts_in_place(dtype, path, monkeypatch):
    """4-D operands (batch, head, rows, cols) go to MKL's pointer-array batch GEMM (compiled path only) with
    any batch strides: q, k, v as views of one (B, T, 3, H, D) array, the output written into a (B, T, H, D)
    array's heads side by side, and added to (accumulate)."""
    rng = np.random.default_rng(7)
    B, T, H, D = 3, 7, 4, 5
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    qkv = rng.standard_normal((B, T, 3 * H * D)).astype(dtype)
    q, k, v = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)  # (B, H, T, D) views
    used = []
    real = blas._gemm
    monkeypatch.setattr(blas, "_gemm", lambda *args: used.append(real(*args)) or used[-1])
    with in_line():
        att = blas.matmul(q, k.swapaxes(-1, -2))
        np.testing.assert_allclose(att, q @ k.swapaxes(-1, -2), **tol)
        buf = np.full((B, T, H + 1, D), 9.0, dtype)  # one spare head: must stay untouched
        out = buf[:, :, :H].transpose(0, 2, 1, 3)  # (B, H, T, D), heads side by side in each row
        assert blas.matmul(att, v, out=out) is out
        np.testing.assert_allclose(out, att @ v, **tol)
        blas.matmul(att, v, out=out, accumulate=True)
        np.testing.assert_allclose(out, 2 * (att @ v), **tol)
        assert (buf[:, :, H] == 9.0).all()
    assert used == [path == "compiled"] * 3  # through ctypes, 4-D products are NumPy's


@needs_mkl
def test_stacks_of_stacks_mkl_must_not_write_go_to_numpy(path):
    lib = blas._library()[0]
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((2, 3, 4, 5)).astype(np.float32), rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    step = a.itemsize
    for out in (np.lib.stride_tricks.as_strided(np.zeros(200, np.float32), (2, 3, 4, 6), (0, 24 * step, 6 * step, step)),
                np.lib.stride_tricks.as_strided(np.zeros(200, np.float32), (2, 3, 4, 6), (72 * step, 3 * step, 6 * step,
                                                                                           step)),
                np.zeros((2, 3, 6, 4), np.float32).swapaxes(-1, -2), np.zeros((2, 3, 4, 6), np.float32)[::-1]):
        before = out.copy()
        assert blas._gemm(lib, a, b, out, 0.0) is False  # overlapping matrices, column-major, negative batch
        np.testing.assert_array_equal(out, before)
    with in_line():
        np.testing.assert_allclose(blas.matmul(a, b[:, :1]), a @ b[:, :1], rtol=1e-5)  # broadcasting: NumPy's


@needs_mkl
def test_the_pointer_arrays_live_through_the_mkl_call(tmp_path):
    """gemm_4d builds its pointer and size arrays in compiled code. With Numba's reference-count pruning off
    and freed memory poisoned (NUMBA_DEBUG_NRT), an array freed before the call (its address taken earlier)
    gives MKL garbage; compiled afresh into an empty cache, the product must still be right."""
    pytest.importorskip("numba")
    code = ("import numpy as np, scratchllm.kernels.cpu as kc\n"
            f"kc.CACHE_DIR = {str(tmp_path)!r}\n"
            "from scratchllm.kernels import blas, threads\n"
            "rng = np.random.default_rng(0)\n"
            "a, b = rng.standard_normal((2, 3, 4, 5)).astype('f4'), rng.standard_normal((2, 3, 5, 6)).astype('f4')\n"
            "out = np.zeros((2, 3, 4, 6), 'f4')\n"
            "with threads.in_line():\n"
            "    assert blas._gemm(blas._library()[0], a, b, out, 0.0)\n"
            "print(float(np.abs(out - a @ b).max()))\n")
    env = {**os.environ, "NUMBA_LLVM_REFPRUNE_PASS": "0", "NUMBA_DEBUG_NRT": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip().splitlines()[-1]) < 1e-4, run.stdout[-2000:]
