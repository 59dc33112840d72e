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
    got = provenance.nvidia_smi("00000000:1B:00.0", run=run)
    assert got["name"] == "NVIDIA H100 80GB HBM3" and got["driver_version"] == "550.54.15"
    assert got["clocks.sm"] == "1980" and got["clocks.max.mem"] == "2619" and got["temperature.gpu"] == "41"
    assert "clocks_event_reasons.active" not in got and len(calls) == 1
    assert calls[0][0] == "nvidia-smi" and "--format=csv,noheader,nounits" in calls[0]
    assert calls[0][-1] == "--id=00000000:1B:00.0"  # CuPy's GPU, not nvidia-smi's first


def test_an_older_driver_gets_each_field_alone_and_the_old_throttle_name():
    known = dict(zip(provenance.SMI_FIELDS, ["Tesla V100", "470.1", "P0", "1380", "877", "1530", "877", "1312",
                                             "Enabled", "300.00", "35", "0x0000000000000000"]))
    known["clocks_throttle_reasons.active"] = known.pop("clocks_event_reasons.active")

    def run(cmd, **kw):
        fields = cmd[1].split("=", 1)[1].split(",")
        if any(f not in known for f in fields):  # one unknown field fails the whole query, as nvidia-smi does
            return types.SimpleNamespace(returncode=2, stdout="Field is not a valid field to query.")
        return types.SimpleNamespace(returncode=0, stdout=", ".join(known[f] for f in fields) + "\n")
    got = provenance.nvidia_smi(run=run)
    assert got["name"] == "Tesla V100" and got["clocks.sm"] == "1380"
    assert got["clocks_event_reasons.active"] == "0x0000000000000000"


def test_nvidia_smi_missing_or_failing_gives_nothing():
    def missing(cmd, **kw):
        raise FileNotFoundError("nvidia-smi")

    def failing(cmd, **kw):
        return types.SimpleNamespace(returncode=9, stdout="")

    def hung(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, 20)
    assert (provenance.nvidia_smi(run=missing) == provenance.nvidia_smi(run=failing) ==
            provenance.nvidia_smi(run=hung) == {})


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
