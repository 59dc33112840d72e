"""`scratchllm gradcheck`: the API's defaults and tolerances on the command line, failing elements printed,
exit status 1 on a failed check and 2 on bad arguments, and a user's own op file."""

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from scratchllm import cli
from scratchllm.gradcheck import gradcheck

EXAMPLE = Path(__file__).parents[1] / "docs" / "examples" / "softclip.py"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "scratchllm", *args], capture_output=True, text=True, timeout=120)


def test_defaults_are_the_apis_and_help_shows_them():
    args = cli.build_parser().parse_args(["gradcheck"])
    api = inspect.signature(gradcheck).parameters
    for key in ("mode", "eps", "atol", "rtol", "seed"):
        assert getattr(args, key) == api[key].default, key
    p = run_cli("gradcheck", "--help")
    text = " ".join(p.stdout.split())
    for shown in ("(default: auto)", "(default: 1e-05)", "(default: 1e-10)", "(default: 1e-07)", "(default: 0)"):
        assert shown in text
    assert "--atol" in text and "FILE.py" in text and "exit status" in text.lower()


def test_atol_and_rtol_both_reach_the_check(capsys):
    assert cli.main(["gradcheck", "attention", "--rtol", "1e-13"]) == 0  # atol 1e-10 still allows it
    capsys.readouterr()
    assert cli.main(["gradcheck", "attention", "--rtol", "1e-13", "--atol", "0"]) == 1
    out = capsys.readouterr().out
    assert "atol 0, rtol 1e-13" in out and "worst elements" in out and "FAILED: attention" in out


def test_a_users_op_file_passes(capsys):
    assert cli.main(["gradcheck", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(str(EXAMPLE))]
    assert [(r[1], r[2], r[-1]) for r in rows] == [("x", "float64", "yes"), ("a", "float64", "yes")]
    assert "all 48 elements" in out and "every op passed" in out and "zero dout gives zero grads" in out


def test_a_planted_bug_in_a_users_file_fails_with_its_elements(tmp_path, capsys):
    buggy = tmp_path / "softclip_bug.py"
    buggy.write_text(EXAMPLE.read_text().replace("(t - u * dt)", "(t - dt)"))  # forgot the inner derivative
    assert cli.main(["gradcheck", str(buggy), "gelu", "--dtype", "float32"]) == 1
    out = capsys.readouterr().out
    assert "gradcheck failed for input 'a'" in out and "input 'x'" not in out
    assert "worst elements" in out and "\n      (0,): " in out
    assert f"FAILED: {buggy}" in out and "gelu" in out.split("FAILED")[0]
    assert all("float32" in line for line in out.splitlines() if line.startswith(str(buggy)))


def test_a_users_backward_that_raises_fails_the_check_with_its_line(tmp_path, capsys):
    f = tmp_path / "raises.py"
    f.write_text("import numpy as np\n\ndef forward(x):\n    return 2 * x, None\n\n"
                 "def backward(dout, cache):\n    return (dout * undefined_name,)\n\n"
                 "def example_inputs():\n    return (np.ones(3),)\n")
    assert cli.main(["gradcheck", str(f)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: NameError: name 'undefined_name' is not defined (raises.py line 7)" in out


@pytest.mark.parametrize("text, says", [
    (None, "no such file"),
    ("def forward(x):\n    return x, x\n", "missing: backward, example_inputs"),
    ("def forward(x:\n", "SyntaxError"),
    ("import numpy as np\ndef forward(x): return x, x\ndef backward(d, c): return (d,)\n"
     "def example_inputs(): return np.ones(3)\n", "must return a tuple"),
    ("raise RuntimeError('no data here')\n", "importing it raised RuntimeError: no data here"),
    ("def forward(x): return x, x\ndef backward(d, c): return (d,)\ndef example_inputs(): return [1, 2]\n",
     "at least one a float array"),
])
def test_a_bad_op_file_is_one_line_and_exit_2(tmp_path, text, says):
    f = tmp_path / "my_op.py"
    if text is not None:
        f.write_text(text)
    p = run_cli("gradcheck", str(f))
    assert p.returncode == 2 and p.stdout == "", p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr and says in p.stderr


def test_bad_tolerances_seeds_and_paths_exit_2(tmp_path):
    for args in (["gelu", "--eps", "0"], ["gelu", "--eps", "inf"], ["gelu", "--atol", "-1"], ["gelu", "--rtol", "inf"],
                 ["gelu", "--atol", "x"], [str(EXAMPLE), "--seed", "-3"], [str(tmp_path)], ["./README.md"]):
        p = run_cli("gradcheck", *args)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
        assert ("--seed" in p.stderr) == ("--seed" in args) and ("directory" in p.stderr) == (args == [str(tmp_path)])


def test_a_forward_without_its_cache_fails_with_exit_1(tmp_path, capsys):
    f = tmp_path / "nocache.py"
    f.write_text("import numpy as np\ndef forward(x):\n    return 2 * x\ndef backward(dout, cache):\n"
                 "    return (2 * dout,)\ndef example_inputs():\n    return (np.ones(3),)\n")
    assert cli.main(["gradcheck", str(f)]) == 1
    assert "forward must return (out, cache)" in capsys.readouterr().out


def test_the_old_name_attention_full_still_checks_the_noncausal_op(capsys):
    assert cli.main(["gradcheck", "attention_full"]) == 0
    out = capsys.readouterr().out
    assert "attention_noncausal " in out and "1 op checked" in out


def test_an_op_file_with_a_dataclass_loads(tmp_path, capsys):
    """The file is imported as a module is (in sys.modules while it runs): dataclasses in it work."""
    f = tmp_path / "scaled.py"
    f.write_text("from __future__ import annotations\nfrom dataclasses import dataclass\nimport numpy as np\n\n"
                 "@dataclass\nclass Cache:\n    s: float\n\n"
                 "def forward(x):\n    return 3.0 * x, Cache(3.0)\n\n"
                 "def backward(dout, cache):\n    return (cache.s * dout,)\n\n"
                 "def example_inputs():\n    return (np.linspace(-1, 1, 5),)\n")
    assert cli.main(["gradcheck", str(f)]) == 0, capsys.readouterr().out


def test_dispatched_checks_the_fast_implementations(monkeypatch, capsys):
    """--dispatched: the registry op as the model runs it. A wrong fast implementation fails there while the
    textbook still passes."""
    from scratchllm.kernels import implementations, select

    x = __import__("scratchllm").ops.OPS["gelu"].make_inputs()[0]
    if select("gelu", x) == "reference":
        pytest.skip("no fast GELU runs here (SCRATCHLLM_KERNELS=0): --dispatched checks the textbook")
    impl = implementations("gelu")[select("gelu", x)]
    module = __import__(impl.module, fromlist=["gelu_backward"])
    real = module.gelu_backward
    monkeypatch.setattr(module, "gelu_backward", lambda d, c: (real(d, c)[0] * 1.001,))
    assert cli.main(["gradcheck", "gelu"]) == 0
    assert cli.main(["gradcheck", "gelu", "--dispatched"]) == 1
    assert "FAILED: gelu" in capsys.readouterr().out
