"""Shared test configuration: hypothesis profiles and the `gpu` marker."""

import os

import pytest
from hypothesis import HealthCheck, settings

# `ci` (the default): bounded and derandomized, so CI is reproducible and fast on 2 cores.
# `nightly`: many more examples, random. Choose with HYPOTHESIS_PROFILE=nightly.
settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=400, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    from scratchllm.backend import cupy_status

    usable, reason = cupy_status()
    if not usable:
        skip = pytest.mark.skip(reason=f"needs a usable GPU: {reason}")
        for item in gpu_items:
            item.add_marker(skip)
