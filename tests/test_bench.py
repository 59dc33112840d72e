"""`scratchllm bench`: the harness runs, checks before it times, records its environment, and fails loudly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from scratchllm import bench, cli, ops
from scratchllm.bench import ops as bench_ops
from scratchllm.ops import Op

PEAKS = {"cpu": {"gemm_n": 8, "copy_mb": 1, "peak_gflops": 100.0, "peak_gbs": 10.0}, "dtype": "float32"}
TIMING_KEYS = {"median_ms", "iqr_ms", "min_ms", "ci95_ms", "drift", "flags", "repeats", "number", "samples_ms"}
ROW_KEYS = {"op", "sizes", "shapes", "backend", "device", "dtype", "check", "fwd", "bwd", "torch", "flops", "bytes",
            "gflops", "gbs", "pct_peak", "ratio_torch", "speedup_numpy"}


def _has_torch():
    return bench.import_torch() is not None


def test_cli_tiny_writes_json_with_environment_and_every_column(tmp_path, capsys):
    j, m = tmp_path / "r.json", tmp_path / "r.md"
    code = cli.main(["bench", "--shapes", "tiny", "--ops", "linear", "layernorm", "--repeats", "3", "--quick",
                     "--processes", "2",
                     "--backend", "numpy", "--json", str(j), "--markdown", str(m), "--no-progress"])
    assert code == 0
    res = json.loads(j.read_text())
    for key in ("time_utc", "git_commit", "cpu", "cpu_count", "numpy", "blas", "python", "torch", "torch_threads",
                "scratchllm_threads",
                "thread_env", "load_avg_1m", "background_cpu_busy_pct", "cupy_usable", "gpu"):
        assert key in res["env"], key
    cpu = res["peaks"]["cpu"]
    assert cpu["numpy_gemm_gflops"] > 0 and cpu["numpy_copy_gbs"] > 0 and cpu["peak_gflops"] >= cpu["numpy_gemm_gflops"]
    assert set(cpu["levels"]) == {"L2", "LLC", "DRAM"} and cpu["peak_gbs"] >= cpu["numpy_copy_gbs"]
    assert res["command"].startswith("scratchllm bench --suite ops --shapes tiny --ops linear layernorm")
    assert [r["op"] for r in res["ops"]] == ["linear", "layernorm"]
    for r in res["ops"]:
        assert ROW_KEYS <= set(r) and r["check"]["ok"] and r["shapes"] == "tiny"
        assert r["sizes"] == ops.OPS[r["op"]].default_sizes
        for k in ("fwd", "bwd"):
            assert TIMING_KEYS <= set(r[k]) and r[k]["repeats"] >= 3 and r[k]["median_ms"] > 0
            assert len(r[k]["process_medians_ms"]) == 2  # timed in two worker processes
            assert r["gflops"][k] > 0 and r["gbs"][k] > 0 and r["pct_peak"][k][1] in "FB"
        if _has_torch():
            assert r["torch"]["check"] == "ok" and set(r["ratio_torch"]) == {"fwd", "bwd", "total"}
    text = m.read_text()
    assert text.strip() in capsys.readouterr().out  # the same markdown went to stdout
    assert "| op | sizes | backend | check | fwd | bwd |" in text and "| linear | N6 Cin5 Cout4 | numpy | ok |" in text


def test_cost_models_give_known_numbers():
    assert bench_ops.cost("linear", dict(N=2, Cin=3, Cout=4)) == {"fwd": (56, 120), "bwd": (104, 192)}
    assert bench_ops.cost("layernorm", dict(N=2, C=3)) == {"fwd": (48, 72), "bwd": (78, 108)}
    # causal attention counts the T (T+1) / 2 useful query-key pairs; full attention all T^2
    assert bench_ops.cost("attention", dict(B=1, H=1, T=2, D=3))["fwd"] == (4 * 3 * 3 + 5 * 3, 4 * 4 * 6)
    assert bench_ops.cost("attention_noncausal", dict(B=1, H=1, T=2, D=3))["fwd"] == (4 * 4 * 3 + 5 * 4, 96)
    assert bench_ops.cost("cross_entropy", dict(B=1, T=2, V=5)) == {"fwd": (46, 56), "bwd": (20, 96)}
    assert bench_ops.cost("gelu", dict(N=2, C=3), itemsize=8) == {"fwd": (60, 96), "bwd": (102, 144)}
    assert bench_ops.cost("embedding", dict(B=1, T=2, V=5, C=3))["bwd"] == (6, 4 * (15 + 6) + 16)
    assert bench_ops.cost("no_such_op", {}) is None
    for name, op in ops.OPS.items():  # every registered op has a model, at every shape set that covers it
        assert bench_ops.cost(name, op.default_sizes) is not None, name
        for sizes in bench_ops.shape_cases("gpt2-small", name, op, 8):
            assert set(sizes) == set(op.default_sizes), name


def _broken_registry(monkeypatch, float32_only):
    good = ops.OPS["gelu"]

    def wrong(dout, cache):
        (dx,) = good.backward(dout, cache)
        return (dx * 1.01,) if (dout.dtype == np.float32 or not float32_only) else (dx,)

    registry = dict(ops.OPS)
    registry["gelu"] = Op("gelu", good.forward, wrong, good.build, good.default_sizes, good.input_names)
    return registry


@pytest.mark.parametrize("float32_only", [True, False])
@pytest.mark.parametrize("use_torch", [True, False])
def test_a_broken_op_is_caught_and_not_timed(monkeypatch, float32_only, use_torch):
    registry = _broken_registry(monkeypatch, float32_only)
    res = bench.run_bench(shapes=("tiny",), ops=["gelu", "softmax"], backend="numpy", repeats=3,
                          quick=True, processes=0, progress=False,
                          registry=registry, peaks=PEAKS, use_torch=use_torch)
    gelu, softmax = res["ops"]
    reason = gelu["check"]["reason"]
    assert not gelu["check"]["ok"]
    if float32_only:  # only the float32 backward is wrong: it disagrees with the float64 reference
        assert reason.startswith("ours dx: max rel err"), reason
    else:  # wrong in every dtype: the float64 gradcheck at the registry's sizes catches it, torch or not
        assert reason.startswith("gradcheck at {'N': 4, 'C': 6} (float64) failed: dx max rel err"), reason
    assert gelu["fwd"] is None and gelu["bwd"] is None and not gelu["gflops"] and not gelu["ratio_torch"]
    assert softmax["check"]["ok"] and softmax["fwd"]["median_ms"] > 0
    assert "FAIL" in bench.markdown(res)


def test_torch_catches_a_consistently_wrong_backward_too(monkeypatch):
    if not _has_torch():
        pytest.skip("needs torch")
    monkeypatch.setattr(bench_ops, "_gradcheck", lambda name, op: None)  # torch alone must catch it
    res = bench.run_bench(shapes=("tiny",), ops=["gelu"], backend="numpy", repeats=3,
                          quick=True, processes=0, progress=False,
                          registry=_broken_registry(monkeypatch, False), peaks=PEAKS)
    (gelu,) = res["ops"]
    assert not gelu["check"]["ok"] and gelu["check"]["reason"].startswith("ours disagrees with torch (torch dx")
    assert gelu["fwd"] is None and gelu["torch"]["fwd"] is None


def test_cli_exits_1_when_a_check_fails(monkeypatch, capsys):
    monkeypatch.setattr(ops, "OPS", _broken_registry(monkeypatch, True))
    monkeypatch.setattr(bench, "measure_peaks", lambda *a, **k: PEAKS)
    assert cli.main(["bench", "--shapes", "tiny", "--ops", "gelu", "--repeats", "3", "--no-progress", "--quick",
                     "--processes", "0",
                     "--backend", "numpy"]) == 1
    assert "correctness check FAILED for gelu" in capsys.readouterr().err


def test_without_torch_the_torch_columns_are_blank(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    res = bench.run_bench(shapes=("tiny",), ops=["gelu"], backend="numpy", repeats=3,
                          quick=True, processes=0, progress=False)
    (row,) = res["ops"]
    assert res["env"]["torch"] is None and "torch_gemm_gflops" not in res["peaks"]["cpu"]
    assert row["check"]["ok"] and row["torch"] is None and row["ratio_torch"] == {} and row["fwd"]
    assert any("torch is not installed" in n for n in res["notes"])
    line = next(ln for ln in bench.markdown(res).splitlines() if ln.startswith("| gelu"))
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    assert cells[-7:-1] == [""] * 6 and cells[-1]  # torch fwd, bwd, three ratios, speedup: blank; what ran named


def test_no_torch_flag(monkeypatch, capsys):
    monkeypatch.setattr(bench, "measure_peaks", lambda *a, **k: PEAKS)
    assert cli.main(["bench", "--shapes", "tiny", "--ops", "softmax", "--repeats", "3", "--no-torch", "--quick",
                     "--no-progress", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "--no-torch: the torch columns are blank" in out and "| softmax | B2 T3 C5 | numpy | ok |" in out


@pytest.mark.parametrize("args", [["--ops", "nosuchop"], ["--shapes", "huge"], ["--repeats", "1"],
                                  ["--suite", "everything"], ["--configs", "gpt5"], ["--batch", "0"],
                                  ["--dtype", "int8"], ["--backend", "tpu"], ["--repeats", "x"], ["--frob"]])
def test_bad_arguments_exit_2_with_one_line(args, capsys):
    assert cli.main(["bench", *args]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1 and "Traceback" not in cap.err


def test_bad_arguments_from_the_shell():
    p = subprocess.run([sys.executable, "-m", "scratchllm", "bench", "--ops", "nosuchop"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1 and "nosuchop" in p.stderr


@pytest.mark.parametrize("use_torch", [True, False])
def test_train_suite_one_tiny_round(use_torch):
    cfg = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=2, vocab_size=11)
    res = bench.run_bench(suite="train", backend="numpy", train_configs={"tiny": cfg}, rounds=1, steps=1,
                          progress=False, peaks=PEAKS, use_torch=use_torch)
    (row,) = res["train"]
    assert row["check"]["ok"], row["check"]
    assert row["config"] == "tiny" and row["tokens_per_step"] == 16 and row["ours"]["repeats"] == 1
    n_ne = row["params_non_embedding"]
    assert row["flops_per_step"] == (6 * n_ne + 12 * 1 * 2 * 8 * 8) * 16
    assert 0 < row["mfu"]["ours"] == pytest.approx(row["gflops"]["ours"] / 100.0)
    if use_torch and _has_torch():
        assert row["ratio_median"] > 0 and row["mfu"]["torch"] > 0
        assert row["check"]["ours_losses"][0] == pytest.approx(row["check"]["torch_losses"][0], abs=1e-4)
    else:
        assert row["torch"] is None and "ratio_median" not in row and "torch_losses" not in row["check"]
    assert "| tiny | L1 H2 C16 T8 B2 V11 | numpy |" in bench.markdown(res)


def test_plots(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(bench_ops, "SWEEP", {"gelu": [dict(N=4, C=8), dict(N=16, C=8)]})
    res = bench.run_bench(shapes=("tiny", "sweep"), ops=["gelu", "linear"], backend="numpy", repeats=3,
                          quick=True, processes=0,
                          progress=False, peaks=PEAKS)
    assert [r["shapes"] for r in res["ops"]] == ["tiny", "tiny", "sweep", "sweep"]
    from scratchllm.bench.plots import make_plots

    paths = make_plots(res, str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["time_vs_size.png", "roofline.png"]
    assert all((tmp_path / p.rsplit("/", 1)[-1]).stat().st_size > 1000 for p in paths)


@pytest.mark.gpu
def test_cupy_rows_have_a_speedup_over_numpy():
    res = bench.run_bench(shapes=("tiny",), ops=["gelu"], backend="auto", repeats=3,
                          quick=True, processes=0, progress=False)
    numpy_row, cupy_row = res["ops"]
    assert cupy_row["backend"] == "cupy" and cupy_row["check"]["ok"] and cupy_row["speedup_numpy"]["total"] > 0


def test_other_load_counts_our_child_processes_as_our_own():
    """GPT's shard workers are child processes: their CPU time is ours, not 'other processes' (noise)."""
    from scratchllm.bench import OtherLoad

    if not os.path.exists("/proc/self/stat"):
        pytest.skip("needs /proc")
    before = OtherLoad._children_ticks()
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                              "while time.process_time() < 0.5: pass\n"
                              "print('spent', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "spent"  # 0.5 s of its own CPU time, and alive
        spent = (OtherLoad._children_ticks() - before) / os.sysconf("SC_CLK_TCK")
    finally:
        child.communicate("")
    assert 0.45 <= spent < 5
