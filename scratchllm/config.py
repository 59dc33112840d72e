"""The training configuration: ``TrainConfig`` (nanoGPT's names, and the Llama keys), ``PRESETS`` (named starting
points), ``parse_overrides`` (``--key=value`` arguments, unknown keys refused), ``validate`` (every value and the
combinations, as one-line ``ConfigError``s) and ``model_config`` (the model's config for a run).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass
class TrainConfig:
    # data and tokenizer
    data: str = "stdlib"  # "stdlib" (the Python standard library's source), a text file or a directory
    data_cap_bytes: int = 3_000_000  # how much of the default corpus to read
    format: str = "text"  # text | pairs (a JSONL of prompt/response pairs: the loss on the responses only)
    out_dir: str = "out"
    tokenizer: str = "char"  # char | bpe
    vocab_size: int = 0  # 0: the char alphabet's size, or 1024 for bpe
    # model
    arch: str = "gpt"  # gpt (GPT-2) | llama (RMSNorm, rotary positions, grouped-query attention, SwiGLU)
    init_from: str = ""  # "": a new model; else a Hugging Face GPT-2 directory or a scratchllm checkpoint to fine-tune
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    attention: str = "auto"  # auto | full | flash (GPTConfig.attention: flash keeps O(T) memory)
    n_kv_head: int = 0  # llama: key/value heads, dividing n_head (0: n_head, multi-head attention)
    n_inner: int = 0  # llama: the MLP's width (0: 8/3 n_embd rounded up to a multiple of 32, as Llama's rule)
    rope_theta: float = 10000.0  # llama: the rotary embeddings' base
    tie_embeddings: bool = False  # llama: the output head is the token embedding
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
    stats: bool = False  # per-parameter update ratios and per-layer activation statistics in metrics.jsonl
    stats_interval: int = 0  # every this many steps (0: eval_interval); docs/inspect.md
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
    # tiny's size and schedule as a Llama: 4 query heads sharing 2 key/value heads, the MLP 352 wide
    "llama-tiny": dict(arch="llama", n_kv_head=2),
}
CHOICES = dict(format=("text", "pairs"), arch=("gpt", "llama"), tokenizer=("char", "bpe"), optimizer=("adamw", "adam", "adagrad", "sgd"),
               attention=("auto", "full", "flash"), backend=("auto", "numpy", "cupy"), dtype=("float32", "float64"), preset=tuple(PRESETS))
MODEL_KEYS = ("arch", "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "tokenizer", "n_kv_head", "n_inner",
              "rope_theta", "tie_embeddings")
LLAMA_ONLY = ("n_kv_head", "n_inner", "rope_theta", "tie_embeddings")


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
        if arg.startswith("--") and types.get(fields.get(arg[2:])) is bool:  # a bare --stats: true
            arg += "=true"
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
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "vocab_size", "sample_tokens", "nproc", "n_kv_head",
                "n_inner", "stats_interval"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"--{key} must be >= 0; got {getattr(cfg, key)}")
    if cfg.format == "pairs" and cfg.data == "stdlib":
        raise ConfigError("--format=pairs needs --data=FILE.jsonl (prompt/response pairs; docs/finetune.md)")
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"--n_embd ({cfg.n_embd}) must be divisible by --n_head ({cfg.n_head})")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"--dropout must be in [0, 1); got {cfg.dropout}")
    if cfg.arch == "llama":
        if cfg.dropout:
            raise ConfigError(f"--arch=llama has no dropout (Llama trains without); got --dropout={cfg.dropout}")
        if cfg.n_kv_head and cfg.n_head % cfg.n_kv_head:
            raise ConfigError(f"--n_kv_head ({cfg.n_kv_head}) must divide --n_head ({cfg.n_head})")
        if (cfg.n_embd // cfg.n_head) % 2:
            raise ConfigError(f"--arch=llama needs an even head size (rotary embeddings turn pairs); n_embd / n_head "
                              f"= {cfg.n_embd // cfg.n_head}")
        if not cfg.rope_theta > 0:
            raise ConfigError(f"--rope_theta must be > 0; got {cfg.rope_theta}")
    elif not cfg.init_from:  # with --init_from the model says what it is (adopt_init checks the keys against it)
        changed = [k for k in LLAMA_ONLY if getattr(cfg, k) != getattr(TrainConfig, k)]
        if changed:
            raise ConfigError(f"--{changed[0]} is a Llama key: add --arch=llama")
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
    if cfg.stats_interval and not cfg.stats:
        raise ConfigError(f"--stats_interval={cfg.stats_interval} has no effect without --stats: add --stats")
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
    shape = {**model_shape(m), "tokenizer": "char" if isinstance(tokenizer, CharTokenizer) else "bpe"}
    context = shape["block_size"]
    for key, value in (overrides or {}).items():
        if key == "block_size" and value > context:
            raise ConfigError(f"--block_size={value} is longer than the context of --init_from={cfg.init_from} "
                              f"({context})")
        if key in shape and key != "block_size" and value != shape[key]:
            raise ConfigError(f"--{key}={value} conflicts with --init_from={cfg.init_from}, which has "
                              f"{key}={shape[key]}; leave --{key} out")
    if overrides and "block_size" in overrides:
        shape["block_size"] = overrides["block_size"]
    runtime = {"attention": cfg.attention, **({"dropout": cfg.dropout} if hasattr(m, "dropout") else {})}
    model.cfg = dataclasses.replace(m, **runtime)
    cfg = dataclasses.replace(cfg, **shape)
    validate(cfg)
    return cfg


def model_config(cfg: TrainConfig, vocab_size: int):
    """The model's config for a run: a ``GPTConfig``, or a ``LlamaConfig`` (``arch=llama``: the Hugging Face fields
    from nanoGPT's names, the MLP by Llama's rule, 8/3 of the width rounded up to a multiple of 32)."""
    from .models import GPTConfig, LlamaConfig

    if cfg.arch == "gpt":
        return GPTConfig(vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout, cfg.attention)
    return LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.n_embd,
                       intermediate_size=cfg.n_inner or 32 * math.ceil(8 * cfg.n_embd / 3 / 32),
                       num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                       num_key_value_heads=cfg.n_kv_head or cfg.n_head, max_position_embeddings=cfg.block_size,
                       rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings, attention=cfg.attention)


def model_shape(m) -> dict:
    """``model_config`` in reverse: the ``TrainConfig`` keys of a model's config (GPT's or Llama's)."""
    if hasattr(m, "n_layer"):
        return dict(arch="gpt", n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                    vocab_size=m.vocab_size)
    return dict(arch="llama", n_layer=m.num_hidden_layers, n_head=m.num_attention_heads,
                n_kv_head=m.num_key_value_heads, n_embd=m.hidden_size, n_inner=m.intermediate_size,
                block_size=m.max_position_embeddings, vocab_size=m.vocab_size, rope_theta=float(m.rope_theta),
                tie_embeddings=m.tie_word_embeddings)


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
