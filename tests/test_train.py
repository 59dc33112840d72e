"""The trainer end to end: config parsing, bit-exact resume, kill -9, NaN stop, checkpoints refused when bad."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scratchllm import cli
from scratchllm.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from scratchllm.train import PRESETS, ConfigError, TrainingDiverged, make_config, parse_overrides, train

SMALL = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4", "--eval_iters=2",
         "--log_interval=1", "--sample_tokens=0", "--progress=false", "--warmup_iters=2", "--lr_decay_iters=20"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import inspect
    import json as json_module

    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(inspect.getsource(json_module.decoder) * 2, encoding="utf-8")
    return path


def config(tmp_path, corpus, *extra):
    overrides, resume = parse_overrides([f"--data={corpus}", f"--out_dir={tmp_path}", *SMALL, *extra])
    return make_config(overrides), resume


def rows(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def test_overrides_are_typed_and_checked():
    overrides, resume = parse_overrides(["--n_layer=2", "--dropout=0.1", "--decay_lr=false", "--resume",
                                         "--preset=cpu"])
    assert overrides == {"n_layer": 2, "dropout": 0.1, "decay_lr": False, "preset": "cpu"} and resume
    cfg = make_config(overrides)
    assert (cfg.n_layer, cfg.n_embd, cfg.max_iters, cfg.learning_rate) == (2, 128, 2000, 1e-3)
    for args, match in [(["--nlayer=2"], "unknown config key 'nlayer'"), (["--n_layer=2.5"], "expects an int"),
                        (["--decay_lr=maybe"], "expects a bool"), (["--n_layer"], "--key=value")]:
        with pytest.raises(ConfigError, match=match):
            parse_overrides(args)
    for overrides, match in [({"n_embd": 30, "n_head": 4}, "divisible"), ({"optimizer": "lion"}, "optimizer"),
                             ({"preset": "huge"}, "preset"), ({"dropout": 1.5}, "dropout"),
                             ({"tokenizer": "bpe", "vocab_size": 100}, "257"), ({"batch_size": 0}, "batch_size"),
                             ({"attention": "fast"}, "--attention must be one of auto, full, flash"),
                             ({"attention": "flash", "dropout": 0.1}, "no dropout on the attention weights")]:
        with pytest.raises(ConfigError, match=match):
            make_config(overrides)
    assert set(PRESETS) >= {"tiny", "cpu"}


def test_training_logs_evaluates_and_checkpoints(tmp_path, corpus):
    cfg, _ = config(tmp_path, corpus, "--max_iters=20", "--eval_interval=10")
    summary = train(cfg)
    metrics = rows(tmp_path)
    train_rows = [r for r in metrics if "loss" in r]
    eval_rows = [r for r in metrics if "val_loss" in r]
    assert [r["step"] for r in train_rows] == list(range(20))
    assert [r["step"] for r in eval_rows] == [0, 10, 20]
    assert eval_rows[-1]["val_loss"] < eval_rows[0]["val_loss"]
    assert summary["step"] == 20 and summary["val_loss"] == eval_rows[-1]["val_loss"]
    assert resolve_checkpoint(tmp_path).name == "ckpt_0000020"
    assert sorted(p.name for p in tmp_path.glob("ckpt_*")) == ["ckpt_0000010", "ckpt_0000020"]  # keeps two
    model, tokenizer, info = load_checkpoint(tmp_path, backend="numpy", with_optimizer=True)
    assert info["trainer"]["step"] == 20 and tokenizer.decode(tokenizer.encode("def x")) == "def x"


def test_loss_plot_is_written_when_matplotlib_is_installed(tmp_path, corpus):
    pytest.importorskip("matplotlib")
    cfg, _ = config(tmp_path, corpus, "--max_iters=4", "--eval_interval=2")
    summary = train(cfg)
    png = tmp_path / "loss.png"
    assert summary["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("extra", [[], ["--dropout=0.2", "--optimizer=adam"], ["--arch=llama", "--n_kv_head=1"]])
def test_resume_is_bit_identical(tmp_path, corpus, extra):
    straight, _ = config(tmp_path / "a", corpus, "--max_iters=20", "--eval_interval=5", *extra)
    train(straight)
    first, _ = config(tmp_path / "b", corpus, "--max_iters=12", "--eval_interval=5", *extra)
    train(first)  # stops at 12 and checkpoints there
    train(first, resume=True, overrides={"max_iters": 20})
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [r["loss"] for r in a if "loss" in r] == [r["loss"] for r in b if "loss" in r]
    assert [r["val_loss"] for r in a if "val_loss" in r and r["step"] != 12] == \
           [r["val_loss"] for r in b if "val_loss" in r and r["step"] != 12]
    ma, _, ia = load_checkpoint(tmp_path / "a", backend="numpy", with_optimizer=True)
    mb, _, ib = load_checkpoint(tmp_path / "b", backend="numpy", with_optimizer=True)
    for k in ma.params:
        np.testing.assert_array_equal(ma.params[k], mb.params[k])
    for k, v in ia["optimizer_state"]["state"].items():
        np.testing.assert_array_equal(v, ib["optimizer_state"]["state"][k])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus, monkeypatch):
    from scratchllm import optim

    real_step = optim.AdamW.step
    calls = []

    def poisoned(self, grads):
        real_step(self, grads)
        calls.append(1)
        if len(calls) == 13:  # after the 13th update the weights hold NaN
            for group in self.param_groups:
                for p in group["params"].values():
                    p[...] = np.nan

    monkeypatch.setattr(optim.AdamW, "step", poisoned)
    cfg, _ = config(tmp_path, corpus, "--max_iters=30", "--eval_interval=10")
    with pytest.raises(TrainingDiverged, match="loss is nan at step 13.*last good checkpoint"):
        train(cfg)
    model, _, info = load_checkpoint(tmp_path, backend="numpy", with_optimizer=True)
    assert info["trainer"]["step"] == 10 and all(np.isfinite(v).all() for v in model.params.values())


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "scratchllm", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def test_kill_9_during_training_leaves_a_loadable_checkpoint(tmp_path, corpus):
    args = ["train", f"--data={corpus}", f"--out_dir={tmp_path}", *SMALL, "--max_iters=100000",
            "--eval_interval=3", "--lr_decay_iters=100000"]
    proc = subprocess.Popen([sys.executable, "-m", "scratchllm", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(tmp_path.glob("ckpt_*"))) < 2:
            time.sleep(0.05)
        time.sleep(0.37)  # somewhere in the middle of steps and checkpoint writes
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the command the user started (with mpi4py: the launcher of the ranks)
        proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and trainers(tmp_path):
        time.sleep(0.1)
    assert not trainers(tmp_path)  # nothing trains on into the directory (no orphaned mpirun or rank)
    model, _, info = load_checkpoint(tmp_path, backend="numpy", with_optimizer=True)
    step = info["trainer"]["step"]
    assert step >= 3 and step % 3 == 0
    resumed = run_cli(*args[:-2], f"--max_iters={step + 2}", "--lr_decay_iters=100000", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(tmp_path, backend="numpy", with_optimizer=True)[2]["trainer"]["step"] == step + 2


def trainers(out_dir) -> list:
    """The processes whose command line names ``out_dir`` (a run into it), zombies left out."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if f"--out_dir={out_dir}" in cmd and not zombie:
            found.append(int(pid))
    return found


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("run")
    cfg, _ = config(out, corpus, "--max_iters=4", "--eval_interval=4")
    train(cfg)
    return resolve_checkpoint(out)


def corrupt(src, dst, how):
    import shutil

    shutil.copytree(src, dst)
    model_file = dst / "model.safetensors"
    if how == "truncated":
        model_file.write_bytes(model_file.read_bytes()[:-100])
    elif how == "garbage":
        model_file.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\x00" * 64)
    elif how == "missing tokenizer":
        (dst / "tokenizer.json").unlink()
    elif how == "bad config":
        (dst / "config.json").write_text("{\"format\": \"scratchllm\", \"model\": {\"n_layer\": ")
    elif how in ("wrong shape", "wrong name", "wrong dtype"):
        from safetensors.numpy import load_file, save_file

        tensors = load_file(model_file)
        if how == "wrong shape":
            tensors["ln_f.bias"] = np.zeros(3, np.float32)
        elif how == "wrong name":
            tensors["ln_f.beta"] = tensors.pop("ln_f.bias")
        else:
            tensors["ln_f.bias"] = tensors["ln_f.bias"].astype(np.float64)
        save_file(tensors, model_file)
    return dst


@pytest.mark.parametrize("how, match", [("truncated", "not a valid safetensors"), ("garbage", "not a valid"),
                                        ("missing tokenizer", "tokenizer.json"), ("bad config", "not valid JSON"),
                                        ("wrong shape", "ln_f.bias has shape \\(3,\\)"),
                                        ("wrong name", "missing \\['ln_f.bias'\\]"),
                                        ("wrong dtype", "dtype float64")])
def test_corrupt_checkpoints_are_refused_with_one_line(tmp_path, good_ckpt, how, match):
    bad = corrupt(good_ckpt, tmp_path / "bad", how)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(bad, backend="numpy")
    p = run_cli("generate", f"--ckpt={bad}", "--max_new_tokens=3")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert p.stdout == ""


def test_generate_cli_streams_text(good_ckpt):
    p = run_cli("generate", f"--ckpt={good_ckpt.parent}", "--prompt=def ", "--max_new_tokens=20", "--seed=3")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("def ") and len(p.stdout) >= 5
    again = run_cli("generate", f"--ckpt={good_ckpt}", "--prompt=def ", "--max_new_tokens=20", "--seed=3")
    assert again.stdout == p.stdout


@pytest.mark.parametrize("args", [["train", "--n_layer=two"], ["train", "--nope=1"], ["train", "--preset=xl"],
                                  ["train", "--data=/no/such/file", "--max_iters=1"],
                                  ["generate", "--ckpt=/no/such/dir"], ["generate"],
                                  ["generate", "--ckpt=x", "--top_k=abc"]])
def test_bad_arguments_exit_2_with_one_line(args, tmp_path):
    p = run_cli(*args, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_main_in_process_returns_1_when_training_diverges(tmp_path, corpus, monkeypatch):
    from scratchllm import train as train_module

    def boom(*a, **k):
        raise TrainingDiverged("loss is nan at step 3; stopped")

    monkeypatch.setattr(train_module, "train", boom)
    assert cli.main(["train", f"--out_dir={tmp_path}", "--nproc=1"]) == 1  # in this process, not MPI ranks
