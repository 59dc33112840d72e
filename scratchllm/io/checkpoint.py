"""Checkpoints: safetensors + JSON in one directory, written atomically, validated on load, never unpickled.

A checkpoint directory holds::

    model.safetensors       the parameters (GPT: Hugging Face GPT-2's names without 'transformer.'; Llama:
                            LlamaForCausalLM's, a tied head once)
    config.json             {"format": "scratchllm", "version": 1, "arch": "gpt" | "llama", "model": its config's
                            fields, "dtype": ..., "train": {...}}   (no "arch": gpt, as before it was written)
    tokenizer.json          the tokenizer (scratchllm.tokenizer)
    optimizer.safetensors   the optimizer's state arrays            (training checkpoints only)
    trainer.json            step, RNG states, the optimizer's JSON part, best val loss   (training checkpoints only)

A training run's ``out_dir`` holds ``ckpt_<step>`` directories and a ``latest`` file naming the newest one.
Each checkpoint is written to a temporary sibling, fsynced and renamed into place; ``latest`` is replaced
atomically after that, and older checkpoints are pruned only then. A ``kill -9`` at any moment leaves the
previous good checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..models import ARCHS

FORMAT, VERSION = "scratchllm", 1
MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE = "model.safetensors", "config.json", "tokenizer.json"
OPTIM_FILE, TRAINER_FILE, LATEST = "optimizer.safetensors", "trainer.json", "latest"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or does not match the model: one clear line."""


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_tensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    _fsync_write(path, save(arrays, metadata=metadata))


def _load_tensors(path: Path) -> dict:
    from safetensors.numpy import load

    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load(path.read_bytes())
    except Exception as e:  # SafetensorError, or a header that is not JSON
        raise CheckpointError(f"{path} is not a valid safetensors file ({str(e).splitlines()[0][:120]})") from None


def _load_json(path: Path, error=CheckpointError, missing: str = "") -> dict:
    """The JSON object in ``path``; a missing file, bad JSON or a non-object raise ``error`` (one line)."""
    if not path.is_file():
        raise error(f"{path} is missing{missing}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise error(f"{path} must hold a JSON object")
    return obj


def save_checkpoint(ckpt_dir, model, tokenizer, optimizer=None, trainer_state=None, train_config=None) -> Path:
    """Write a checkpoint directory atomically (a temporary sibling, fsynced, then renamed into place)."""
    from ..backend import to_numpy

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir.parent / f".{ckpt_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _save_tensors(tmp / MODEL_FILE, {k: to_numpy(v) for k, v in model.params.items()}, {"format": FORMAT})
    arch = next(name for name, cls in ARCHS.items() if isinstance(model, cls))
    config = {"format": FORMAT, "version": VERSION, "arch": arch, "model": model.cfg.to_dict(),
              "dtype": model.dtype.name, "train": train_config or {}}
    _fsync_write(tmp / CONFIG_FILE, json.dumps(config, indent=2).encode())
    tokenizer.save(tmp / TOKENIZER_FILE)
    if optimizer is not None:
        sd = optimizer.state_dict()
        _save_tensors(tmp / OPTIM_FILE, {k: to_numpy(v) for k, v in sd["state"].items()}, {"format": FORMAT})
        trainer = {**(trainer_state or {}), "optimizer": {k: v for k, v in sd.items() if k != "state"}}
        _fsync_write(tmp / TRAINER_FILE, json.dumps(trainer, indent=2).encode())
    _fsync_dir(tmp)
    if ckpt_dir.exists():  # replacing a checkpoint of the same name: move the old one aside first
        old = ckpt_dir.parent / f".{ckpt_dir.name}.old-{os.getpid()}"
        os.replace(ckpt_dir, old)
        os.replace(tmp, ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, ckpt_dir)
    _fsync_dir(ckpt_dir.parent)
    return ckpt_dir


def check_output_dir(path, flag: str, source=None, checkpoint_ok: bool = False) -> Path:
    """``path`` as a directory to write a model into: new, or empty, or (``checkpoint_ok``) a scratchllm checkpoint
    to replace; never ``source`` or a directory holding it. Anything else (a run's out_dir, a Hugging Face directory
    whose old tokenizer files would stay beside the new weights, a file, the user's own folder) is refused with a
    ValueError naming ``flag``, before anything is written."""
    path = Path(path)
    target = path.resolve()
    if source is not None:
        src = Path(source).resolve()
        if target == src or target in src.parents or src in target.parents:
            raise ValueError(f"{flag}={path} would overwrite the model it converts ({source}): choose a new path")
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return path
    is_checkpoint = (path / CONFIG_FILE).is_file() and _load_json(path / CONFIG_FILE, ValueError).get("format") == FORMAT
    if checkpoint_ok and is_checkpoint and not any(path.glob("ckpt_*")):
        return path
    raise ValueError(f"{flag}={path} exists and is not an empty directory" + (" or a scratchllm checkpoint" if
                     checkpoint_ok else "") + ": choose a new path (nothing was written)")


def save_training_checkpoint(out_dir, step, keep=2, **kwargs) -> Path:
    """``out_dir/ckpt_<step>`` written atomically, then ``out_dir/latest`` pointed at it, then old ones pruned."""
    out_dir = Path(out_dir)
    path = save_checkpoint(out_dir / f"ckpt_{step:07d}", **kwargs)
    tmp = out_dir / f".{LATEST}.tmp-{os.getpid()}"
    _fsync_write(tmp, path.name.encode())
    os.replace(tmp, out_dir / LATEST)
    _fsync_dir(out_dir)
    for old in sorted(out_dir.glob("ckpt_*"))[:-keep] if keep else []:
        if old.name != path.name:
            shutil.rmtree(old, ignore_errors=True)
    return path


def resolve_checkpoint(path) -> Path:
    """A checkpoint directory itself, or a run's out_dir (its ``latest``, else its newest ``ckpt_*``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if (path / MODEL_FILE).exists() or (path / CONFIG_FILE).exists():
        return path
    latest = path / LATEST
    if latest.is_file():
        name = latest.read_text(encoding="utf-8", errors="replace").strip()
        if name and "/" not in name and (path / name).is_dir():
            return path / name
    candidates = sorted(p for p in path.glob("ckpt_*") if p.is_dir())
    if not candidates:
        raise CheckpointError(f"{path} holds no checkpoint ({MODEL_FILE} or ckpt_* directories)")
    return candidates[-1]


def load_checkpoint(path, backend="auto", dtype=None, with_optimizer=False):
    """Load and validate a checkpoint: ``(model, tokenizer, info)``.

    ``info`` has ``config`` (config.json), ``path`` and, with ``with_optimizer``, ``optimizer_state`` (the
    ``state_dict`` layout of ``scratchllm.optim``) and ``trainer`` (trainer.json). Every problem (missing
    file, truncated or corrupt safetensors, wrong names, shapes or dtypes) raises ``CheckpointError``.
    """
    from ..text.tokenizer import load_tokenizer

    path = resolve_checkpoint(path)
    config = _load_json(path / CONFIG_FILE)
    if config.get("format") != FORMAT or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path / CONFIG_FILE} is not a scratchllm checkpoint config")
    arch = config.get("arch", "gpt")
    if arch not in ARCHS:
        raise CheckpointError(f"{path / CONFIG_FILE}: unknown arch {arch!r} (known: {', '.join(ARCHS)})")
    try:
        cfg = ARCHS[arch].config_type(**config["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: bad model config ({e})") from None
    saved_dtype = config.get("dtype", "float32")
    tensors = _load_tensors(path / MODEL_FILE)
    model = ARCHS[arch](cfg, dtype=dtype or saved_dtype, backend=backend, init=False)
    expected = {name: tuple(p.shape) for name, p in model.params.items()}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path / MODEL_FILE} does not match its config: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    for name, shape in expected.items():
        a = tensors[name]
        if tuple(a.shape) != shape:
            raise CheckpointError(f"{path / MODEL_FILE}: {name} has shape {tuple(a.shape)}, expected {shape}")
        if a.dtype.name != saved_dtype:
            raise CheckpointError(f"{path / MODEL_FILE}: {name} has dtype {a.dtype.name}, expected {saved_dtype}")
        if not np.isfinite(a).all():
            raise CheckpointError(f"{path / MODEL_FILE}: {name} holds NaN or Inf")
    try:
        tokenizer = load_tokenizer(path / TOKENIZER_FILE)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / TOKENIZER_FILE}: {str(e).splitlines()[0]}") from None
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {cfg.vocab_size}")
    model.load_state_dict(tensors)
    info = {"config": config, "path": path}
    if with_optimizer:
        trainer = _load_json(path / TRAINER_FILE)
        if not isinstance(trainer.get("optimizer"), dict):
            raise CheckpointError(f"{path / TRAINER_FILE} has no optimizer section")
        info["trainer"] = trainer
        info["optimizer_state"] = {**trainer["optimizer"], "state": _load_tensors(path / OPTIM_FILE)}
    return model, tokenizer, info
