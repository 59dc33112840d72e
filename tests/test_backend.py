import math
import sys
import types

import numpy as np
import pytest

from scratchllm import backend
from scratchllm.kernels.numpy.embedding import index_sum
from scratchllm.backend import (BackendError, get_xp, resolve_backend, scatter_add, to_numpy,
                                tune_host_allocator)


def test_get_xp_is_numpy_for_numpy_arrays_and_none():
    assert get_xp(np.zeros(2)) is np and get_xp(None, np.zeros(1)) is np and get_xp() is np


def test_resolve_backend_names_and_env(monkeypatch):
    assert resolve_backend("numpy") == "numpy"
    monkeypatch.setenv("SCRATCHLLM_BACKEND", "numpy")
    assert resolve_backend(None) == "numpy"
    monkeypatch.setenv("SCRATCHLLM_BACKEND", "tpu")
    with pytest.raises(ValueError, match="SCRATCHLLM_BACKEND must be one of auto, numpy, cupy; got 'tpu'"):
        resolve_backend(None)
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("torch")


def fake_cupy(monkeypatch, available=True, alloc_error=None):
    """A cupy module that imports, and then reports or fails like a machine without a real GPU."""
    cupy = types.ModuleType("cupy")
    cupy.float32 = np.float32
    cupy.cuda = types.SimpleNamespace(is_available=lambda: available,
                                      Device=lambda: types.SimpleNamespace(synchronize=lambda: None))

    def arange(*a, **k):
        if alloc_error:
            raise alloc_error
        return np.arange(*a, **k)

    cupy.arange = arange
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    backend.cupy_status.cache_clear()
    monkeypatch.setattr(backend, "_log_auto_fallback", lambda reason: None)


@pytest.fixture(autouse=True)
def _fresh_status():
    backend.cupy_status.cache_clear()
    yield
    backend.cupy_status.cache_clear()


def test_cupy_that_imports_but_fails_on_first_allocation_is_not_usable(monkeypatch):
    fake_cupy(monkeypatch, available=True, alloc_error=RuntimeError("cudaErrorInsufficientDriver: no driver"))
    usable, reason = backend.cupy_status()
    assert not usable and "not usable" in reason and "cudaErrorInsufficientDriver" in reason
    assert resolve_backend("auto") == "numpy"
    with pytest.raises(BackendError, match="'cupy' was requested but cupy imports but the GPU is not usable"):
        resolve_backend("cupy")


def test_cupy_without_device_is_not_usable(monkeypatch):
    fake_cupy(monkeypatch, available=False)
    assert backend.cupy_status() == (False, "cupy imports but reports no CUDA device")


def test_working_device_is_usable(monkeypatch):
    fake_cupy(monkeypatch, available=True)
    assert backend.cupy_status()[0]
    assert resolve_backend("auto") == "cupy"


def test_auto_without_cupy_logs_why_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    backend._log_auto_fallback.cache_clear()
    with caplog.at_level("INFO", logger="scratchllm"):
        assert resolve_backend("auto") == "numpy"
        assert resolve_backend("auto") == "numpy"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "using numpy because cupy is not importable" in lines[0]
    backend._log_auto_fallback.cache_clear()


def test_scatter_add_accumulates_repeated_indices():
    target = np.zeros((3, 2))
    scatter_add(target, np.array([2, 0, 2, 2]), np.arange(8.0).reshape(4, 2))
    np.testing.assert_array_equal(target, [[2, 3], [0, 0], [0 + 4 + 6, 1 + 5 + 7]])


@pytest.mark.parametrize("ids", [
    [], [4], [1, 1, 1, 1, 1], [0, 1, 2, 3, 4, 5, 6, 7], [7, 0, 7, 3, 3, 9, 0, 7, 1],  # empty, one, all same, distinct
    np.random.default_rng(0).integers(0, 10, 200),  # few ids, long runs
    np.minimum(np.random.default_rng(1).zipf(1.5, 300), 9),  # a skewed, text-like mix of runs and singles
])
def test_scatter_add_equals_np_add_at_onto_a_nonzero_target(ids):
    """The NumPy path sorts and sums runs (backend._run_sums); np.add.at, one element at a time, is the
    reference. The target already holds values: scatter-add adds to them, it does not overwrite. index_sum
    is the same into zeros."""
    ids = np.asarray(ids, dtype=np.int64)
    rng = np.random.default_rng(2)
    target = rng.standard_normal((10, 3, 2))
    values = rng.standard_normal((ids.size, 3, 2))
    expected = target.copy()
    np.add.at(expected, ids, values)
    zero_based = expected - target
    scatter_add(target, ids, values)
    np.testing.assert_allclose(target, expected, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(index_sum(ids, values, 10), zero_based, rtol=1e-13, atol=1e-13)


def test_to_numpy_erf_and_synchronize():
    a = np.arange(3.0)
    assert to_numpy(a) is a or np.array_equal(to_numpy(a), a)
    x = np.linspace(-3, 3, 13, dtype=np.float32)
    y = backend.erf(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [math.erf(v) for v in x], rtol=1e-6)
    backend.synchronize(a)  # a no-op for NumPy


@pytest.mark.gpu
def test_ops_on_cupy_match_numpy():
    import cupy  # noqa: F401  (only reached when a GPU is usable)

    from scratchllm.ops import OPS

    for name, op in OPS.items():
        host = op.make_inputs(dtype="float32", seed=0)
        dev = op.make_inputs(dtype="float32", seed=0, xp=cupy)
        out_h, cache_h = op.forward(*host)
        out_d, cache_d = op.forward(*dev)
        np.testing.assert_allclose(to_numpy(out_d), out_h, rtol=1e-5, atol=1e-6, err_msg=name)
        dout = np.random.default_rng(1).standard_normal(out_h.shape).astype(np.float32)
        for gh, gd in zip(op.backward(dout, cache_h), op.backward(cupy.asarray(dout), cache_d)):
            if gh is not None:
                np.testing.assert_allclose(to_numpy(gd), gh, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.gpu
def test_gradcheck_on_cupy_directional():
    import cupy

    from scratchllm.gradcheck import gradcheck
    from scratchllm.ops import OPS

    for name, op in OPS.items():
        assert gradcheck(op.forward, op.backward, op.make_inputs(xp=cupy), mode="directional").ok, name


def test_index_sum_into_a_large_table_is_zero_outside_the_indices():
    """Above 2 M elements the zeros are written by every CPU thread (kernels/numpy/embedding.py's zeros_on_every_core); the
    memory is reused, so a stale value anywhere would show."""
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 40_000, 300)
    values = rng.standard_normal((300, 64)).astype(np.float32)
    tune_host_allocator()  # freed blocks stay in the heap (GPT does this on the CPU)
    junk = np.full(40_000 * 64, 7.0, np.float32)  # freed, then handed out again to index_sum
    del junk
    result = index_sum(ids, values, 40_000)
    expected = np.zeros((40_000, 64), np.float32)
    np.add.at(expected, ids, values)
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)


def test_importing_the_package_is_cheap_and_its_names_still_work():
    import subprocess
    import sys

    code = ("import sys, scratchllm\n"
            "assert [m for m in sys.modules if m.startswith('scratchllm')] == ['scratchllm'], sys.modules.keys()\n"
            "assert not {'numba', 'cupy', 'torch', 'numpy'} & set(sys.modules)\n"
            "from scratchllm import GPT, GPTConfig, AdamW, GradcheckError, gradcheck, get_xp, load_hf_gpt2\n"
            "import scratchllm.gradcheck as g\n"
            "assert g is gradcheck and callable(gradcheck) and GPT.__name__ == 'GPT'\n"
            "assert 'numba' not in sys.modules\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
