"""The ``emu`` fixture: NumPy stands in for CuPy (``emulator.fake_cupy``) and every CUDA kernel of
``scratchllm/kernels/cuda/`` compiles for the host, so the same Python wrappers launch them. Skipped, with the
reason, where no C++20 compiler can be had."""

import sys

import pytest

from tests.cuda_emu import emulator


def pytest_collection_modifyitems(config, items):
    cxx, why = emulator.compiler()
    if cxx is None:
        for item in items:
            if "cuda_emu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"the CUDA host emulator needs a C++20 compiler: {why}"))


@pytest.fixture
def emu(monkeypatch):
    """The fake cupy in ``sys.modules`` (what ``kernels.cuda._common.cupy()`` imports), with the compiled-module
    caches emptied before and after, so no emulated module outlives the test."""
    from scratchllm.kernels.cuda import _common, gelu, optim

    caches = (_common.raw_module, _common.kernel, gelu._ek, optim._ek, _common.sm_count)
    for c in caches:
        c.cache_clear()
    monkeypatch.setitem(sys.modules, "cupy", emulator.fake_cupy())
    yield emulator
    for c in caches:
        c.cache_clear()
