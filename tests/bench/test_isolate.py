"""bench/isolate.py: each side timed in worker processes of its own; ours never imports torch there."""

import json
import subprocess
import sys

import pytest

from scratchllm.bench import isolate

CASE = {"op": "layernorm", "sizes": {"N": 4, "C": 6}, "backend": "numpy", "dtype": "float32"}
QUICK = {"warmup_s": 0.001, "min_time_s": 0.005, "repeats": 3}


def test_ours_is_timed_in_a_process_that_never_imports_torch():
    code = ("import json, sys\nfrom scratchllm.bench.isolate import serve\n"
            f"out = serve({{'side': 'ours', 'cases': [{CASE!r}], 'timing': {QUICK!r}}})\n"
            "print(json.dumps(['torch' in sys.modules, out[0]['fwd']['median_ms'] > 0]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [False, True]


def test_samples_of_every_process_are_pooled_and_each_process_median_kept():
    out = isolate.run_isolated([CASE, {**CASE, "op": "no_such_op"}], {"ours": [0, 1]}, 2, QUICK)
    fwd = out["ours"][0]["fwd"]
    assert len(fwd["process_medians_ms"]) == 2 and fwd["repeats"] >= 6
    assert out["ours"][1]["error"].startswith("KeyError")  # a failing case reports, the others are timed


def test_torch_is_timed_in_its_own_process():
    pytest.importorskip("torch")
    out = isolate.run_isolated([CASE], {"ours": [0], "torch": [0]}, 1, QUICK)
    assert out["torch"][0]["bwd"]["median_ms"] > 0 and out["ours"][0]["bwd"]["median_ms"] > 0
