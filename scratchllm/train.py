"""Training: nanoGPT's loop on the hand-written model (GPT or Llama), with atomic checkpoints and bit-exact resume.

The configuration (``TrainConfig``, ``PRESETS``, ``parse_overrides``) is ``config.py``'s, re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from .backend import resolve_backend, to_numpy, xp_for
from .config import (CHOICES, MODEL_KEYS, PRESETS, ConfigError, TrainConfig, adopt_init, make_config,  # noqa: F401
                     make_optimizer, model_config, parse_overrides, validate)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _encodes(tokenizer, text) -> bool:
    try:
        tokenizer.encode(text)
    except ValueError:
        return False
    return True


def estimate_loss(model, splits: dict, cfg: TrainConfig, step: int, masks: dict | None = None) -> dict:
    """Mean loss over ``eval_iters`` batches per split, in eval mode, with batches from an RNG of its own
    (seeded by seed and step) so evaluating never disturbs the training stream. ``model``: a model or its
    ``DataParallel``. With ``masks`` (pairs) the loss is the responses' alone."""
    from .text.data import get_batch

    model.eval()
    out = {}
    for k, (name, tokens) in enumerate(splits.items()):
        rng = np.random.default_rng([cfg.seed, step, k, 7])
        losses = [float(model.forward(*get_batch(tokens, cfg.batch_size, cfg.block_size, rng,
                                                 (masks or {}).get(name)))[1])
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
    from .inspect.stats import shard_caches, training_stats
    from .io.metrics import plot_metrics, plot_stats, truncate_metrics
    from .text.data import get_batch, load_text, prepare_tokens
    from .text.pairs import END_CHAR, encode_pairs, render, split_examples, unencodable
    from .generate import generate_text
    from .io.pretrained import fit_vocabulary, load_pretrained
    from .models import ARCHS
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
        origin = f"resuming from {info['path']} at step {step}"
    else:
        step, trainer = 0, None
    fresh = not resume and not cfg.init_from  # a new model and tokenizer
    if not resume and cfg.init_from:
        model, tokenizer = load_pretrained(cfg.init_from, dtype=cfg.dtype, backend=backend)
        cfg = adopt_init(cfg, model, tokenizer, overrides)
        origin = f"initialised from {cfg.init_from}"
    try:  # every rank reads the same data, so under MPI every rank meets the same error (printed once)
        if cfg.format == "pairs":  # prompt/response pairs: the template's text, the loss on responses only
            train_examples, val_examples, how = split_examples(cfg.data)
            text = "".join(t for ex in train_examples + val_examples for t, _ in render(ex, END_CHAR))
            description = f"{len(train_examples)} + {len(val_examples)} prompt/response pairs in {cfg.data} ({how})"
        else:
            text, description = load_text(cfg.data, cfg.data_cap_bytes)
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if not resume and cfg.init_from:  # characters a char --init_from model lacks (e.g. \x04 for pairs) get rows
        old = tokenizer.vocab_size
        tokenizer, added = fit_vocabulary(model, tokenizer, text)
        if added:
            cfg = dataclasses.replace(cfg, vocab_size=tokenizer.vocab_size)
            origin += (f"; vocabulary extended from {old} to {tokenizer.vocab_size} characters for {cfg.data}: "
                       f"{added!r}, each a new row at the mean of the embeddings")
    if fresh:
        tokenizer = train_tokenizer(cfg.tokenizer, text, cfg.vocab_size or (None if cfg.tokenizer == "char" else 1024))
    if not lead:
        comm.Barrier()  # rank 0 writes the token files first; the other ranks then map the same files
    masks = None
    if cfg.format == "pairs":  # encoded in memory on every rank
        try:
            (train_tokens, train_mask), (val_tokens, val_mask) = (encode_pairs(part, tokenizer) for part in
                                                                  (train_examples, val_examples))
        except ValueError as e:  # a character a resumed run's vocabulary lacks: name its line
            where = unencodable(cfg.data, tokenizer) or f"{cfg.data}: {str(e).splitlines()[0]}"
            raise ConfigError(where + ("; --resume keeps the checkpoint's vocabulary (a new run with --init_from "
                                       "extends it)" if resume else "")) from None
        masks = {"train": train_mask, "val": val_mask}
    else:
        train_tokens, val_tokens = prepare_tokens(text, tokenizer, out_dir / "data")
    if lead and comm is not None:
        comm.Barrier()
    if not fresh:
        say(origin)  # after the data is read and encoded: an error there is the only line
    for name, toks in (("train", train_tokens), ("val", val_tokens)):
        if len(toks) <= cfg.block_size + 1:
            raise ConfigError(f"the {name} split of {description} has only {len(toks)} tokens; "
                              f"it needs more than block_size + 1 = {cfg.block_size + 1}")
    if fresh:
        mcfg = model_config(cfg, tokenizer.vocab_size)  # a GPTConfig or a LlamaConfig
        model = ARCHS[cfg.arch](mcfg, seed=cfg.seed, dtype=cfg.dtype, backend=backend)
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
    say(f"model: {cfg.arch}, {model.num_params():,} parameters, {backend} {cfg.dtype}; out_dir {out_dir}")

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
    t_start, t_log, tokens_since, last, first_step = time.perf_counter(), time.perf_counter(), 0, {}, step
    resumed_at = step if resume else None
    try:
        while True:
            if (step % cfg.eval_interval == 0 or step == cfg.max_iters) and step != resumed_at:
                losses = estimate_loss(dp, {"train": train_tokens, "val": val_tokens}, cfg, step, masks)
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
            x, y = get_batch(train_tokens, cfg.batch_size, cfg.block_size, batch_rng, masks and masks["train"])
            stats_now = cfg.stats and step % (cfg.stats_interval or cfg.eval_interval) == 0
            model.trace = {} if stats_now else None  # the forward records each layer's activations into it
            _, loss, cache = dp.forward(xp.asarray(x), xp.asarray(y))
            grads = dp.backward(cache)
            raw = {k: g.copy() for k, g in grads.items()} if stats_now else None  # the gradients before clipping
            if cfg.grad_clip > 0:
                clip_grad_norm(grads, cfg.grad_clip)
            before = {k: p.copy() for k, p in model.params.items()} if stats_now else None
            opt.step(grads)
            if stats_now:  # the step's actual size against the weights, and the activations (inspect/stats.py)
                stats = training_stats(model, before, raw, shard_caches(cache), model.trace)
                metrics.write(json.dumps({"step": step, "stats": stats}) + "\n")
                model.trace = raw = before = None
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
    summary = {"step": step, "steps_run": step - first_step, "seconds": seconds, "out_dir": str(out_dir), **last}
    if lead and plot_metrics(metrics_path, out_dir / "loss.png"):
        summary["plot"] = str(out_dir / "loss.png")
    if lead and cfg.stats and plot_stats(metrics_path, out_dir / "stats.png"):
        summary["stats_plot"] = str(out_dir / "stats.png")
    if cfg.sample_tokens and lead and cfg.format == "pairs":  # its samples are replies in the template
        _log(f"no free-running sample for a pairs run: talk to it, scratchllm chat --ckpt={out_dir}")
    elif cfg.sample_tokens and lead and not _encodes(tokenizer, cfg.sample_prompt):
        _log(f"no sample: --sample_prompt={cfg.sample_prompt!r} has characters this tokenizer does not know")
    elif cfg.sample_tokens and lead:
        _log(f"--- sample ({cfg.sample_tokens} tokens after {cfg.sample_prompt!r}) ---")
        print(cfg.sample_prompt, end="", flush=True)
        generate_text(model, tokenizer, cfg.sample_prompt, cfg.sample_tokens, temperature=0.8, top_k=200,
                      seed=cfg.seed, stream=lambda s: print(s, end="", flush=True))
        print(flush=True)
    return summary
