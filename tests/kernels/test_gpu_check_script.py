"""benchmarks/gpu_check.sh: valid bash, and on a machine without a usable GPU it records the machine and stops
cleanly (exit 0) saying why."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from scratchllm.backend import cupy_status

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_check.sh"
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def test_script_is_executable_valid_bash():
    assert os.access(SCRIPT, os.X_OK), f"{SCRIPT} is not executable"
    done = subprocess.run([BASH, "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_usage_error_without_out_dir():
    done = subprocess.run([BASH, str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage: benchmarks/gpu_check.sh OUT_DIR" in done.stderr


def test_without_a_gpu_it_records_the_machine_and_exits_cleanly(tmp_path):
    usable, reason = cupy_status()
    if usable:
        pytest.skip("a GPU is usable here: the script would run the whole check")
    out = tmp_path / "gpu-check"
    done = subprocess.run([BASH, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (out / "summary.txt").read_text()
    assert "no usable GPU, nothing to check" in summary
    for name in ("env.txt", "nvidia-smi.txt", "scratchllm-info.txt"):
        assert (out / name).exists(), name
    assert not (out / "pytest-gpu.log").exists()
