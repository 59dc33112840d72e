"""Training: nanoGPT's loop on the hand-written model, with atomic checkpoints and bit-exact resume.

``TrainConfig`` uses nanoGPT's names; ``PRESETS`` hold named starting points (``tiny``, the default, and
``cpu``, nanoGPT's CPU recipe); ``parse_overrides`` turns ``--key=value`` arguments into a config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import resolve_backend, to_numpy, xp_for


@dataclass
class TrainConfig:
    # data and tokenizer
    data: str = "stdlib"  # "stdlib" (the Python standard library's source), a text file or a directory
    data_cap_bytes: int = 3_000_000  # how much of the default corpus to read
    out_dir: str = "out"
    tokenizer: str = "char"  # char | bpe
    vocab_size: int = 0  # 0: the char alphabet's size, or 1024 for bpe
    # model
    init_from: str = ""  # "": a new model; else a Hugging Face GPT-2 directory or a scratchllm checkpoint to fine-tune
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    attention: str = "auto"  # auto | full | flash (GPTConfig.attention: flash keeps O(T) memory)
    # optimisation
    batch_size: int = 16
    max_iters: int = 1200
    learning_rate: float = 2e-3
    min_lr: float = 2e-4
    warmup_iters: int = 50
    lr_decay_iters: int = 0  # 0: max_iters
    decay_lr: bool = True
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0: off
    optimizer: str = "adamw"  # adamw | adam | adagrad | sgd
    # evaluation, logging, sampling
    eval_interval: int = 300
    eval_iters: int = 20
    log_interval: int = 10
    sample_tokens: int = 300
    sample_prompt: str = "def "
    progress: bool = True
    # run
    nproc: int = 0  # MPI ranks (mpirun), the batch's rows dealt among them; 0: one per CPU with mpi4py, else 1
    #                 process with the batch's shards in threads (parallel/mpi.py default_ranks, docs/parallel.md)
    seed: int = 1337
    backend: str = "auto"
    dtype: str = "float32"
    preset: str = "tiny"


PRESETS = {
    # The default: about 1-2 minutes on 2 CPU cores, validation loss clearly falling.
    "tiny": {},
    # nanoGPT's CPU recipe (README: shakespeare_char on a MacBook), here on the default corpus.
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000, lr_decay_iters=2000,
                learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, dropout=0.0, beta2=0.99, eval_interval=250,
                eval_iters=20),
}
CHOICES = dict(tokenizer=("char", "bpe"), optimizer=("adamw", "adam", "adagrad", "sgd"), attention=("auto", "full", "flash"),
               backend=("auto", "numpy", "cupy"), dtype=("float32", "float64"), preset=tuple(PRESETS))
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "tokenizer")


class ConfigError(ValueError):
    """A bad --key=value or an impossible configuration (the CLI prints it as one line, exit 2)."""


def _convert(key: str, raw: str, typ):
    if typ is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{key} expects a bool (true/false); got {raw!r}")
    try:
        return typ(raw)
    except ValueError:
        raise ConfigError(f"--{key} expects {'an int' if typ is int else 'a float'}; got {raw!r}") from None


def parse_overrides(args) -> tuple[dict, bool]:
    """``["--key=value", "--resume", ...]`` -> ({key: typed value}, resume). Unknown keys and bad types raise."""
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    types = {"int": int, "float": float, "str": str, "bool": bool}
    out, resume = {}, False
    for arg in args:
        if arg == "--resume":
            resume = True
            continue
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"arguments are --key=value (or --resume); got {arg!r}")
        key, raw = arg[2:].split("=", 1)
        if key not in fields:
            raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(fields)}")
        out[key] = _convert(key, raw, types[fields[key]])
    return out, resume


def make_config(overrides: dict) -> TrainConfig:
    """A preset, then the overrides on top; checks every value and the combinations."""
    preset = overrides.get("preset", "tiny")
    if preset not in PRESETS:
        raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    cfg = TrainConfig(**{**PRESETS[preset], **overrides})
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"--{key} must be one of {', '.join(allowed)}; got {getattr(cfg, key)!r}")
    for key in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "eval_interval", "eval_iters",
                "log_interval", "data_cap_bytes"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"--{key} must be >= 1; got {getattr(cfg, key)}")
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "vocab_size", "sample_tokens", "nproc"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"--{key} must be >= 0; got {getattr(cfg, key)}")
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"--n_embd ({cfg.n_embd}) must be divisible by --n_head ({cfg.n_head})")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"--dropout must be in [0, 1); got {cfg.dropout}")
    if cfg.attention == "flash" and cfg.dropout:
        raise ConfigError(f"--attention=flash has no dropout on the attention weights (a whole-matrix feature): "
                          f"use --attention=full or auto with --dropout={cfg.dropout}, or --dropout=0")
    for key in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
        if not math.isfinite(getattr(cfg, key)) or getattr(cfg, key) < 0:
            raise ConfigError(f"--{key} must be a finite number >= 0; got {getattr(cfg, key)}")
    if not (0.0 <= cfg.beta1 < 1.0 and 0.0 <= cfg.beta2 < 1.0):
        raise ConfigError(f"--beta1 and --beta2 must be in [0, 1); got {cfg.beta1}, {cfg.beta2}")
    if cfg.tokenizer == "bpe" and 0 < cfg.vocab_size < 257:
        raise ConfigError(f"--vocab_size for bpe must be >= 257 (256 bytes + end-of-text); got {cfg.vocab_size}")
    if cfg.vocab_size > 2**20:
        raise ConfigError(f"--vocab_size {cfg.vocab_size} is larger than this trainer supports (2**20)")
    if cfg.nproc > cfg.batch_size:
        raise ConfigError(f"--nproc ({cfg.nproc}) must be <= --batch_size ({cfg.batch_size}): each rank takes rows "
                          "of the batch")
    if cfg.lr_decay_iters and cfg.lr_decay_iters < cfg.warmup_iters:
        raise ConfigError(f"--lr_decay_iters ({cfg.lr_decay_iters}) must be >= --warmup_iters ({cfg.warmup_iters})")


def adopt_init(cfg: TrainConfig, model, tokenizer, overrides: dict | None) -> TrainConfig:
    """``cfg`` with the model keys of the ``init_from`` model (its shape, vocabulary and tokenizer kind).

    A key the user set (named in ``overrides``) must agree with it, except ``block_size``, the training window,
    which may be shorter than the model's context. The model's dropout becomes ``cfg.dropout``.
    """
    from .text.tokenizer import CharTokenizer

    m = model.cfg
    shape = dict(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                 vocab_size=m.vocab_size, tokenizer="char" if isinstance(tokenizer, CharTokenizer) else "bpe")
    for key, value in (overrides or {}).items():
        if key == "block_size" and value > m.block_size:
            raise ConfigError(f"--block_size={value} is longer than the context of --init_from={cfg.init_from} "
                              f"({m.block_size})")
        if key in shape and key != "block_size" and value != shape[key]:
            raise ConfigError(f"--{key}={value} conflicts with --init_from={cfg.init_from}, which has "
                              f"{key}={shape[key]}; leave --{key} out")
    if overrides and "block_size" in overrides:
        shape["block_size"] = overrides["block_size"]
    model.cfg = dataclasses.replace(m, dropout=cfg.dropout, attention=cfg.attention)
    cfg = dataclasses.replace(cfg, **shape)
    validate(cfg)
    return cfg


def make_optimizer(cfg: TrainConfig, params: dict):
    from .optim import SGD, Adagrad, Adam, AdamW, decay_groups

    groups = decay_groups(params, cfg.weight_decay)  # decay only >= 2-D weights, as nanoGPT does
    if cfg.optimizer == "adamw":
        return AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))
    if cfg.optimizer == "adam":
        return Adam(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))
    if cfg.optimizer == "adagrad":
        return Adagrad(groups, lr=cfg.learning_rate)
    return SGD(groups, lr=cfg.learning_rate, momentum=cfg.beta1)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def estimate_loss(model, splits: dict, cfg: TrainConfig, step: int) -> dict:
    """Mean loss over ``eval_iters`` batches per split, in eval mode, with batches from an RNG of its own
    (seeded by seed and step) so evaluating never disturbs the training stream. ``model``: a model or its
    ``DataParallel``."""
    from .text.data import get_batch

    model.eval()
    out = {}
    for k, (name, tokens) in enumerate(splits.items()):
        rng = np.random.default_rng([cfg.seed, step, k, 7])
        losses = [float(model.forward(*get_batch(tokens, cfg.batch_size, cfg.block_size, rng))[1])
                  for _ in range(cfg.eval_iters)]
        out[name] = float(np.mean(losses))
    model.train()
    return out


def train(cfg: TrainConfig, resume: bool = False, overrides: dict | None = None) -> dict:
    """Run training; returns a summary dict (final train/val loss, steps, seconds, paths).

    ``overrides``: the keys the user set explicitly. With ``--resume`` they replace the saved config; with
    ``init_from`` they are checked against the loaded model (``adopt_init``).
    """
    from .io.checkpoint import load_checkpoint, resolve_checkpoint, save_training_checkpoint
    from .io.metrics import plot_metrics, truncate_metrics
    from .text.data import get_batch, load_text, prepare_tokens
    from .generate import generate_text
    from .io.hf import load_pretrained
    from .models.gpt import GPT, GPTConfig
    from .optim import clip_grad_norm, get_lr
    from .parallel import DataParallel
    from .parallel.mpi import MPIDataParallel, share_cpus, world
    from .parallel.nccl import use_gpu_of_rank
    from .text.tokenizer import train_tokenizer

    comm = world()  # the MPI ranks, when mpirun started more than one
    lead = comm is None or comm.Get_rank() == 0  # rank 0 alone logs and writes metrics, checkpoints, samples
    say = _log if lead else (lambda msg: None)
    if comm is not None:
        share_cpus(comm)

    out_dir = Path(cfg.out_dir)
    metrics_path = out_dir / "metrics.jsonl"
    backend = resolve_backend(cfg.backend)
    xp = xp_for(backend)
    if comm is not None and backend == "cupy":
        use_gpu_of_rank(comm, xp.cuda.runtime)  # one rank per GPU, its gradients summed by NCCL
    if resume:
        model, tokenizer, info = load_checkpoint(resolve_checkpoint(out_dir), backend=backend, with_optimizer=True)
        saved = TrainConfig(**{**info["config"]["train"], **(overrides or {})})
        changed = [k for k in MODEL_KEYS if getattr(saved, k) != info["config"]["train"].get(k)]
        if changed:
            raise ConfigError(f"--resume cannot change the model's {', '.join(changed)}")
        cfg = saved
        validate(cfg)
        trainer = info["trainer"]
        step = int(trainer["step"])
        say(f"resuming from {info['path']} at step {step}")
    else:
        step, trainer = 0, None
    fresh = not resume and not cfg.init_from  # a new model and tokenizer
    if not resume and cfg.init_from:
        model, tokenizer = load_pretrained(cfg.init_from, dtype=cfg.dtype, backend=backend)
        cfg = adopt_init(cfg, model, tokenizer, overrides)
        say(f"initialised from {cfg.init_from}")
    try:  # every rank reads the same data, so under MPI every rank meets the same error (printed once)
        text, description = load_text(cfg.data, cfg.data_cap_bytes)
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if fresh:
        tokenizer = train_tokenizer(cfg.tokenizer, text, cfg.vocab_size or (None if cfg.tokenizer == "char" else 1024))
    if not lead:
        comm.Barrier()  # rank 0 writes the token files first; the other ranks then map the same files
    train_tokens, val_tokens = prepare_tokens(text, tokenizer, out_dir / "data")
    if lead and comm is not None:
        comm.Barrier()
    for name, toks in (("train", train_tokens), ("val", val_tokens)):
        if len(toks) <= cfg.block_size + 1:
            raise ConfigError(f"the {name} split of {description} has only {len(toks)} tokens; "
                              f"it needs more than block_size + 1 = {cfg.block_size + 1}")
    if fresh:
        mcfg = GPTConfig(tokenizer.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout,
                         cfg.attention)
        model = GPT(mcfg, seed=cfg.seed, dtype=cfg.dtype, backend=backend)
        cfg = dataclasses.replace(cfg, vocab_size=tokenizer.vocab_size)
    model.cfg = dataclasses.replace(model.cfg, attention=cfg.attention)  # a runtime choice (resume may change it)
    mode, why = model.attention_mode(cfg.block_size, cfg.dropout, cfg.batch_size)
    say(f"attention: {mode} ({why}); the whole-matrix path keeps "
         f"{model.whole_matrix_bytes(cfg.batch_size, cfg.block_size) / 2**20:,.1f} MiB of weights per step here"
         + ("" if mode == "full" else ", flash attention one number per query row"))
    opt = make_optimizer(cfg, model.params)
    if comm is not None:  # the batch's rows dealt to the ranks, gradients summed by Allreduce
        dp = MPIDataParallel(model, comm)
        say(f"data parallel: {dp.size} MPI ranks, each with its rows of the batch of {cfg.batch_size}"
            + (f" (--nproc={cfg.nproc} left aside: mpirun started {dp.size})" if cfg.nproc not in (0, dp.size) else "")
            + (f"; {dp.size - cfg.batch_size} of them without a row" if dp.size > cfg.batch_size else ""))
    else:
        dp = DataParallel(model)  # the batch in shards on every CPU core (on the GPU the model takes it whole)
        if backend == "numpy":
            n = min(dp.workers, cfg.batch_size)
            say(f"data parallel: {n} shard{'s' * (n > 1)} of the batch at once, in threads")
    batch_rng = np.random.default_rng([cfg.seed, 2])
    best_val = math.inf
    if resume:
        opt.load_state_dict(info["optimizer_state"])
        batch_rng.bit_generator.state = trainer["batch_rng"]
        model.rng.bit_generator.state = trainer["dropout_rng"]
        best_val = trainer.get("best_val_loss", math.inf)
        if lead:
            truncate_metrics(metrics_path, step)
    out_dir.mkdir(parents=True, exist_ok=True)
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    say(f"data: {description}: {len(train_tokens):,} train / {len(val_tokens):,} val tokens, "
         f"{cfg.tokenizer} tokenizer with {tokenizer.vocab_size} tokens")
    say(f"model: {model.num_params():,} parameters, {backend} {cfg.dtype}; out_dir {out_dir}")

    def checkpoint(at_step):
        if not lead:
            return
        state = {"step": at_step, "batch_rng": batch_rng.bit_generator.state,
                 "dropout_rng": model.rng.bit_generator.state, "best_val_loss": best_val}
        save_training_checkpoint(out_dir, at_step, model=model, tokenizer=tokenizer, optimizer=opt,
                                 trainer_state=state, train_config=dataclasses.asdict(cfg))

    from tqdm import tqdm

    metrics = open(metrics_path if lead else os.devnull, "a", encoding="utf-8")
    bar = tqdm(total=cfg.max_iters, initial=step, disable=not (cfg.progress and lead), dynamic_ncols=True,
               file=sys.stderr)
    t_start, t_log, tokens_since, last = time.perf_counter(), time.perf_counter(), 0, {}
    resumed_at = step if resume else None
    try:
        while True:
            if (step % cfg.eval_interval == 0 or step == cfg.max_iters) and step != resumed_at:
                losses = estimate_loss(dp, {"train": train_tokens, "val": val_tokens}, cfg, step)
                if not all(math.isfinite(v) for v in losses.values()):
                    raise TrainingDiverged(f"evaluation loss is {losses} at step {step}")
                best_val = min(best_val, losses["val"])
                row = {"step": step, "train_loss": losses["train"], "val_loss": losses["val"]}
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                if lead:
                    bar.write(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}",
                              file=sys.stderr)
                checkpoint(step)
                last = row
            if step >= cfg.max_iters:
                break
            lr = get_lr(step, cfg.learning_rate, cfg.warmup_iters, decay_iters, cfg.min_lr) if cfg.decay_lr \
                else cfg.learning_rate
            opt.lr = lr
            x, y = get_batch(train_tokens, cfg.batch_size, cfg.block_size, batch_rng)
            _, loss, cache = dp.forward(xp.asarray(x), xp.asarray(y))
            grads = dp.backward(cache)
            if cfg.grad_clip > 0:
                clip_grad_norm(grads, cfg.grad_clip)
            opt.step(grads)
            tokens_since += x.size
            if step % cfg.log_interval == 0:  # the only place the loss is read back (a host sync on GPU)
                loss_value = float(to_numpy(loss))
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(f"loss is {loss_value} at step {step}")
                now = time.perf_counter()
                tok_s = tokens_since / max(now - t_log, 1e-9)
                metrics.write(json.dumps({"step": step, "loss": loss_value, "lr": lr, "tokens_per_s": tok_s}) + "\n")
                metrics.flush()
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
                t_log, tokens_since = now, 0
            step += 1
            bar.update(1)
    except TrainingDiverged as e:
        bar.close()
        metrics.close()
        raise TrainingDiverged(f"{e}; stopped, the last good checkpoint in {out_dir} is kept") from None
    bar.close()
    metrics.close()
    seconds = time.perf_counter() - t_start
    summary = {"step": step, "seconds": seconds, "out_dir": str(out_dir), **last}
    if lead and plot_metrics(metrics_path, out_dir / "loss.png"):
        summary["plot"] = str(out_dir / "loss.png")
    if cfg.sample_tokens and lead:
        _log(f"--- sample ({cfg.sample_tokens} tokens after {cfg.sample_prompt!r}) ---")
        print(cfg.sample_prompt, end="", flush=True)
        generate_text(model, tokenizer, cfg.sample_prompt, cfg.sample_tokens, temperature=0.8, top_k=200,
                      seed=cfg.seed, stream=lambda s: print(s, end="", flush=True))
        print(flush=True)
    return summary
