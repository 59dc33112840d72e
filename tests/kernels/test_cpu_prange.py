"""The fused CPU kernels on every core through Numba's prange (kernels/cpu/__init__.py ``prange_rows``):
exactly the bits of the same kernels on one thread, and the drivers really run."""

import importlib

import numpy as np
import pytest

pytest.importorskip("numba")

from scratchllm.kernels import threads  # noqa: E402
from scratchllm.kernels import cpu  # noqa: E402
from tests.kernels.test_cpu_kernels import CASES, run  # noqa: E402


PAR_DRIVERS = {  # op -> (kernel module, its prange drivers that op must reach)
    "layernorm": ("layernorm", ("_forward_par", "_backward_par")),
    "softmax": ("softmax", ("softmax_rows_par", "softmax_rows_backward_par")),
    "gelu": ("gelu", ("_forward_par", "_backward_par")),
    "gelu_erf": ("gelu", ("_forward_par", "_backward_par")),
    "cross_entropy": ("softmax", ("logsumexp_rows_par", "weighted_softmax_rows_par")),
}


@pytest.mark.parametrize("piece", [1, 50, 97])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(PAR_DRIVERS))
def test_kernels_on_every_core_give_the_one_thread_bits(name, dtype, piece, monkeypatch):
    """Through Numba's prange (TBB layer), in pieces of various sizes (some leave a short last piece), each
    kernel must give exactly the bits of the same kernel on the caller's thread: rows are independent, and
    layernorm's dw and db are summed over pieces fixed by the shape alone."""
    if not cpu._tbb_layer():
        pytest.skip("Numba's TBB threading layer is not in use: the kernels run on the Python threads")
    forward, backward, make = CASES[name]
    inputs = make(3, dtype)
    module_name, drivers = PAR_DRIVERS[name]
    module = importlib.import_module(f"scratchllm.kernels.cpu.{module_name}")
    if hasattr(module, "BACKWARD_PIECE"):  # layernorm: several pieces of sums, on either path
        monkeypatch.setattr(module, "BACKWARD_PIECE", piece)
    with threads.in_line():  # on this thread only: the reference
        want = run(forward, backward, inputs, False, monkeypatch)
    calls = []
    for driver in drivers:
        real = getattr(module, driver)
        monkeypatch.setattr(module, driver, lambda *a, _real=real, _name=driver: calls.append(_name) or _real(*a))
    monkeypatch.setattr(cpu, "PRANGE_MIN", 1)
    monkeypatch.setattr(cpu, "PRANGE_PIECE", piece)
    monkeypatch.setenv(threads.ENV_VAR, "2")
    got = run(forward, backward, inputs, False, monkeypatch)
    assert sorted(set(calls)) == sorted(drivers)
    for a, b in zip(got[:1] + got[2], want[:1] + want[2]):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, b)


def test_the_first_compile_is_announced_once(monkeypatch, tmp_path, capsys):
    from scratchllm.kernels.cpu import compile as cpu_compile

    monkeypatch.setattr(cpu_compile, "_ANNOUNCED", [])
    monkeypatch.setattr(cpu_compile, "CACHE_DIR", str(tmp_path / "not-yet"))
    cpu.announce_first_compile()
    cpu.announce_first_compile()
    err = capsys.readouterr().err
    assert err.count("compiling the CPU kernels (first run only") == 1 and str(tmp_path) in err
    monkeypatch.setattr(cpu_compile, "_ANNOUNCED", [])
    monkeypatch.setattr(cpu_compile, "CACHE_DIR", str(tmp_path))  # a cache that exists: nothing to say
    cpu.announce_first_compile()
    assert capsys.readouterr().err == ""
