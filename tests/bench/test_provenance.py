"""What a result records about its GPU: nvidia-smi's driver and clocks, parsed; TF32 of CuPy and torch."""

import subprocess
import types

from scratchllm.bench import provenance


def test_nvidia_smi_fields_are_parsed_and_missing_ones_left_out():
    line = ("NVIDIA H100 80GB HBM3, 550.54.15, P0, 1980, 2619, 1980, 2619, 1755, Enabled, 700.00, 41, "
            "[Not Supported]\n")
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        return types.SimpleNamespace(returncode=0, stdout=line)
    got = provenance.nvidia_smi(run)
    assert got["name"] == "NVIDIA H100 80GB HBM3" and got["driver_version"] == "550.54.15"
    assert got["clocks.sm"] == "1980" and got["clocks.max.mem"] == "2619" and got["temperature.gpu"] == "41"
    assert "clocks_throttle_reasons.active" not in got
    assert calls[0][0] == "nvidia-smi" and "--format=csv,noheader,nounits" in calls[0]


def test_nvidia_smi_missing_or_failing_gives_nothing():
    def missing(cmd, **kw):
        raise FileNotFoundError("nvidia-smi")

    def failing(cmd, **kw):
        return types.SimpleNamespace(returncode=9, stdout="")

    def hung(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, 20)
    assert provenance.nvidia_smi(missing) == provenance.nvidia_smi(failing) == provenance.nvidia_smi(hung) == {}


def test_tf32_records_cupy_and_torch(monkeypatch):
    monkeypatch.setenv("CUPY_TF32", "1")
    torch = types.SimpleNamespace(
        backends=types.SimpleNamespace(cuda=types.SimpleNamespace(matmul=types.SimpleNamespace(allow_tf32=False)),
                                       cudnn=types.SimpleNamespace(allow_tf32=True)),
        get_float32_matmul_precision=lambda: "highest")
    assert provenance.tf32(torch) == {"cupy": True, "CUPY_TF32": "1", "torch_matmul": False, "torch_cudnn": True,
                                      "torch_float32_matmul_precision": "highest"}
    monkeypatch.delenv("CUPY_TF32")
    assert provenance.tf32() == {"cupy": False, "CUPY_TF32": None}
