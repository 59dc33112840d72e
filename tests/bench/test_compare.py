"""scratchllm bench compare: B/A per timing with an interval and a verdict, and the environment's differences."""

import json

import numpy as np

from scratchllm import cli
from scratchllm.bench import compare, timing


def result(scale, commit, seed):
    rng = np.random.default_rng(seed)
    t = lambda ms: timing.summarize(ms * 1e-3 * (1 + 0.01 * rng.standard_normal(40)))  # noqa: E731
    row = {"shapes": "tiny", "op": "gelu", "sizes": {"N": 4, "C": 6}, "backend": "numpy", "dtype": "float32",
           "fwd": t(1.0 * scale), "bwd": t(2.0), "torch": {"fwd": t(1.0), "bwd": t(2.0)}}
    only = {**row, "op": "softmax"}
    train = {"config": "cpu", "backend": "numpy", "ours": t(30.0 * scale), "torch": t(35.0)}
    return {"schema": 2, "env": {"git_commit": commit, "numpy": "2.4", "time_utc": str(seed)},
            "peaks": {"dtype": "float32", "cpu": {"peak_gflops": 100.0, "peak_gbs": 30.0}},
            "ops": [row] + ([only] if seed else []), "train": [train]}


def test_a_faster_row_a_same_row_and_the_environment(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(result(1.0, "aaa", 0)))
    b.write_text(json.dumps(result(0.8, "bbb", 1)))
    cmp = compare.compare(compare.load(a), compare.load(b))
    verdicts = {(r["row"], r["timing"]): r["verdict"] for r in cmp["rows"]}
    assert verdicts[("gelu N4 C6", "fwd")] == "faster" and verdicts[("gelu N4 C6", "bwd")] == "same"
    assert verdicts[("cpu", "ours step")] == "faster" and verdicts[("cpu", "torch step")] == "same"
    fwd = next(r for r in cmp["rows"] if r["timing"] == "fwd")
    assert fwd["ci95"][0] < fwd["ratio"] < fwd["ci95"][1] < 0.85
    assert cmp["only_b"] == 1 and cmp["env_diff"] == {"git_commit": ("aaa", "bbb")}  # time_utc is not a difference
    same = compare.markdown(compare.compare(compare.load(a), compare.load(a)), str(a), str(a))
    assert "The environments are the same" in same
    assert cli.main(["bench", "compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| gelu N4 C6 | numpy | fwd |" in out and "faster" in out and "`git_commit`: 'aaa' -> 'bbb'" in out


def test_bad_files_and_words_exit_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text('{"rows": []}')
    for words in (["compare", str(bad), str(bad)], ["compare", str(tmp_path / "missing.json"), str(bad)],
                  ["compare", str(bad)], ["comparre", str(bad), str(bad)]):
        assert cli.main(["bench", *words]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("scratchllm bench: ") and "\n" not in err


def test_threads_sets_every_pool_for_the_worker_processes(monkeypatch):
    import os

    from scratchllm import bench

    for var in bench.THREAD_VARS:
        monkeypatch.setenv(var, "7")  # restored after the test
    limits = []
    monkeypatch.setattr("threadpoolctl.threadpool_limits", limits.append)  # this process's BLAS, not for real
    bench.set_threads(1)
    assert all(os.environ[v] == "1" for v in bench.THREAD_VARS) and limits == [1]
    env = bench.environment()
    assert env["thread_env"]["OMP_NUM_THREADS"] == "1" and "tf32" in env and env["git_commit"]
