import subprocess
import sys

import numpy as np

from scratchllm import cli, ops
from scratchllm.ops import Op


def test_gradcheck_every_op_passes(capsys):
    assert cli.main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["op", "input", "dtype"]
    for name in ops.OPS:
        assert f"\n{name} " in out
    assert "every op passed" in out and " NO" not in out


def test_gradcheck_selected_ops_modes_and_dtypes(capsys):
    assert cli.main(["gradcheck", "layernorm", "attention", "--mode", "directional", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("layernorm", "attention"))]
    assert len(rows) == 6 and all("float32" in r and "directional" in r and r.endswith("yes") for r in rows)


def test_gradcheck_exits_1_on_a_wrong_backward(monkeypatch, capsys):
    def wrong(dout, cache):
        return (ops.gelu_backward(dout, cache)[0] * 1.001,)

    good = ops.OPS["gelu"]
    monkeypatch.setitem(ops.OPS, "gelu", Op("gelu", good.forward, wrong, good.build, good.default_sizes,
                                             good.input_names))
    assert cli.main(["gradcheck", "gelu", "softmax"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: gelu" in out and "softmax" in out


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "scratchllm", *args], capture_output=True, text=True,
                          timeout=120)


def test_bad_arguments_exit_2_with_one_line():
    for args in (["gradcheck", "nosuchop"], ["gradcheck", "--mode", "exact"], ["gradcheck", "--dtype", "int8"],
                 ["frobnicate"], [], ["gradcheck", "--seed", "x"]):
        p = run_cli(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, (args, p.stderr)
        assert p.stdout == ""


def test_explicit_cupy_without_a_gpu_is_a_one_line_error():
    from scratchllm.backend import cupy_usable

    if cupy_usable():
        return
    p = run_cli("gradcheck", "gelu", "--backend", "cupy")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "cupy" in p.stderr


def test_info_prints_backend_versions_blas_threads_gpu():
    p = run_cli("info")
    assert p.returncode == 0, p.stderr
    for word in ("backend", "numpy", np.__version__, "blas", "threads", "gpu"):
        assert word in p.stdout


def test_info_lists_every_ops_implementations_and_what_runs():
    from scratchllm import kernels

    p = run_cli("info")
    rows = {line.split()[0]: line.split()[1:] for line in p.stdout.splitlines() if line.startswith("  ")}
    for name, op in ops.OPS.items():
        listed = [n.strip("[]") for n in rows[name] if not n.startswith("(")]
        want = [*kernels.implementations(op.family), kernels.REFERENCE]
        assert listed[:len(want)] == want, name
        chosen = [n.strip("[]") for n in rows[name] if n.startswith("[")]
        assert chosen == [kernels.select(op.family, *op.make_inputs(dtype="float32"),
                                         **getattr(op.forward, "keywords", {}))], name
    p = subprocess.run([sys.executable, "-m", "scratchllm", "info"], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "SCRATCHLLM_KERNELS": "0"})
    assert all("[reference]" in line for line in p.stdout.splitlines()
               if line.startswith("  ") and line.split()[0] in ops.OPS)
