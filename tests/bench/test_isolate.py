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


def test_every_implementation_side_by_side_with_the_textbook_first():
    from scratchllm import bench, kernels

    res = bench.run_bench(shapes=("tiny",), ops=["layernorm", "embedding"], backend="numpy", repeats=3,
                          quick=True, processes=0, progress=False, impls=True, use_torch=False)
    rows = {(r["op"], r["impl_forced"]): r for r in res["ops"]}
    for op in ("layernorm", "embedding"):
        names = [r["impl_forced"] for r in res["ops"] if r["op"] == op]
        assert names[0] == "reference" and rows[(op, "reference")]["impl"] == {"fwd": "reference", "bwd": "reference"}
        for name in names[1:]:
            assert name in kernels.implementations(op) and name in rows[(op, name)]["impl"].values()
        assert all(rows[(op, n)]["check"]["ok"] and rows[(op, n)]["fwd"]["median_ms"] > 0 for n in names)
    assert "numpy" in [r["impl_forced"] for r in res["ops"] if r["op"] == "layernorm"]
    if kernels.cpu_enabled():  # the Numba embedding has a backward only: the textbook's forward beside it
        assert rows[("embedding", "numba")]["impl"] == {"fwd": "reference", "bwd": "numba"}
