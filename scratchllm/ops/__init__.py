"""Hand-written ops: ``<op>_forward(*inputs) -> (out, cache)`` and ``<op>_backward(dout, cache) -> grads``.

``OPS`` is the one registry that the gradcheck CLI, the tests and the benchmarks iterate: a dict from name
to an ``Op`` (forward, backward, and ``make_inputs`` to build example inputs at given sizes). A new op is one
file plus one entry below. Old names in ``ALIASES`` still look an op up (``OPS["attention_full"]``) but are
not keys: iterating ``OPS`` sees each op once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .attention import attention_backward, attention_forward
from .attention_blocked import attention_blocked_backward, attention_blocked_forward
from .cross_entropy import cross_entropy_backward, cross_entropy_forward
from .dropout import dropout_backward, dropout_forward
from .embedding import embedding_backward, embedding_forward
from .flash_attention import flash_attention_backward, flash_attention_forward
from .gelu import gelu_backward, gelu_forward
from .layernorm import layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .rmsnorm import rmsnorm_backward, rmsnorm_forward
from .rope import rope_backward, rope_forward
from .softmax import softmax_backward, softmax_forward
from .swiglu import swiglu_backward, swiglu_forward


@dataclass(frozen=True)
class Op:
    """One registry entry.

    ``forward(*inputs)`` and ``backward(dout, cache)`` follow the op contract (options such as
    ``approximate`` or ``causal`` are already bound). ``make_inputs(sizes=None, dtype=..., seed=...,
    xp=numpy)`` returns a tuple of example inputs; ``sizes`` overrides entries of ``default_sizes`` (the
    letters B, T, C, H, D, V, N). ``input_names`` name the forward's positional inputs.
    """

    name: str
    forward: Callable
    backward: Callable
    build: Callable  # build(rng, dtype, **sizes) -> tuple of NumPy arrays
    default_sizes: dict = field(default_factory=dict)
    input_names: tuple = ()
    doc: str = ""

    @property
    def family(self) -> str:
        """The textbook op this entry runs (``gelu`` for ``gelu_erf``): the name its fast implementations are
        registered under in ``scratchllm/kernels/registry.py``."""
        fn = getattr(self.forward, "func", self.forward)  # variants are functools.partial ...
        fn = getattr(fn, "__wrapped__", fn)  # ... or a small function that binds options
        return fn.__name__.removesuffix("_forward")

    def make_inputs(self, sizes=None, dtype="float64", seed=0, xp=np):
        unknown = set(sizes or {}) - set(self.default_sizes)
        if unknown:
            raise ValueError(f"op {self.name!r} takes sizes {sorted(self.default_sizes)}; got {sorted(unknown)}")
        s = {**self.default_sizes, **(sizes or {})}
        rng = np.random.default_rng(seed)
        arrays = self.build(rng, np.dtype(dtype), **s)
        return tuple(xp.asarray(a) for a in arrays)


def _normal(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _linear_inputs(rng, dtype, N, Cin, Cout):
    return _normal(rng, (N, Cin), dtype), _normal(rng, (Cin, Cout), dtype, 0.5), _normal(rng, (Cout,), dtype)


def _embedding_inputs(rng, dtype, B, T, V, C):
    idx = rng.integers(0, V, size=(B, T))  # V < B*T in the defaults, so some ids repeat
    return idx, _normal(rng, (V, C), dtype)


def _layernorm_inputs(rng, dtype, N, C):
    x = _normal(rng, (N, C), dtype, 2.0) + rng.standard_normal((N, 1)).astype(dtype)  # varied row means
    return x, (1.0 + _normal(rng, (C,), dtype, 0.3)).astype(dtype), _normal(rng, (C,), dtype)


def _elementwise_inputs(rng, dtype, N, C):
    return (_normal(rng, (N, C), dtype, 2.0),)


def _softmax_inputs(rng, dtype, B, T, C):
    return (_normal(rng, (B, T, C), dtype, 2.0),)


def _attention_inputs(rng, dtype, B, H, T, D):
    return tuple(_normal(rng, (B, H, T, D), dtype) for _ in range(3))


def _attention_cached_inputs(rng, dtype, B, H, T, D):
    """q for the last T of T + 3 positions, k and v for all of them (what a KV cache hands attention)."""
    return (_normal(rng, (B, H, T, D), dtype),) + tuple(_normal(rng, (B, H, T + 3, D), dtype) for _ in range(2))


def _grouped_attention_inputs(rng, dtype, B, H, Hk, T, D):
    """q with H heads; k and v with Hk (grouped-query attention: Hk divides H)."""
    return (_normal(rng, (B, H, T, D), dtype),) + tuple(_normal(rng, (B, Hk, T, D), dtype) for _ in range(2))


def _rmsnorm_inputs(rng, dtype, N, C):
    x = _normal(rng, (N, C), dtype, 2.0) + rng.standard_normal((N, 1)).astype(dtype)  # rows not centred
    return x, (1.0 + _normal(rng, (C,), dtype, 0.3)).astype(dtype)


def _rope_inputs(rng, dtype, B, H, T, D):
    """Positions 7 .. 7+T-1: the rotation of tokens that continue a KV cache mid-sequence."""
    return _normal(rng, (B, H, T, D), dtype), np.arange(7, 7 + T)


def _rope_rows_inputs(rng, dtype, B, H, T, D):
    """Each row its own positions (B, T), as Hugging Face's position_ids: rows starting at 0 and at 40."""
    return _normal(rng, (B, H, T, D), dtype), np.arange(T)[None, :] + 40 * np.arange(B)[:, None]


def _swiglu_inputs(rng, dtype, N, C):
    return _normal(rng, (N, C), dtype, 2.0), _normal(rng, (N, C), dtype)


def _cross_entropy_inputs(rng, dtype, B, T, V):
    logits = _normal(rng, (B, T, V), dtype, 2.0)
    targets = rng.integers(0, V, size=(B, T))
    targets[0, 0] = -1  # one ignored position (ignore_index=-1)
    return logits, targets


def in_8_blocks(forward):
    """``forward`` (``attention_blocked_forward``, or an implementation of it) with the queries in blocks of
    ceil(T / 8) rows, at least 2: up to 8 blocks (3 at the registry's T=5), and blocks of 128 rows at GPT-2's
    T=1024. ``.rebind(other)`` makes the same binding of another forward (the dispatch's, a kernel's)."""

    def run(q, k, v):
        return forward(q, k, v, block=max(2, -(-q.shape[2] // 8)))

    run.__wrapped__ = forward  # the op it binds (inspect.unwrap's convention)
    run.rebind = in_8_blocks
    return run


# Former registry names -> current ones. "attention_full" read like gradcheck's mode "full"; it is the
# attention without the causal mask.
ALIASES = {"attention_full": "attention_noncausal"}


class _Registry(dict):
    """A plain dict of ops whose lookup also accepts the old names in ``ALIASES``."""

    def __missing__(self, name):
        if name in ALIASES:
            return self[ALIASES[name]]
        raise KeyError(name)


def resolve(name: str) -> str:
    """The registry name for ``name`` (itself, or the current name of an alias); KeyError if unknown."""
    name = ALIASES.get(name, name)
    if name not in OPS:
        raise KeyError(name)
    return name


OPS: dict[str, Op] = _Registry({
    op.name: op
    for op in (
        Op("linear", linear_forward, linear_backward, _linear_inputs, dict(N=6, Cin=5, Cout=4), ("x", "w", "b")),
        Op("embedding", embedding_forward, embedding_backward, _embedding_inputs,
           dict(B=2, T=5, V=4, C=3), ("idx", "table")),
        Op("layernorm", layernorm_forward, layernorm_backward, _layernorm_inputs, dict(N=4, C=6), ("x", "w", "b")),
        Op("gelu", gelu_forward, gelu_backward, _elementwise_inputs, dict(N=4, C=6), ("x",), "tanh approximation"),
        Op("gelu_erf", functools.partial(gelu_forward, approximate="none"), gelu_backward, _elementwise_inputs,
           dict(N=4, C=6), ("x",), "exact (erf)"),
        Op("softmax", softmax_forward, softmax_backward, _softmax_inputs, dict(B=2, T=3, C=5), ("x",)),
        Op("softmax_axis1", functools.partial(softmax_forward, axis=1), softmax_backward, _softmax_inputs,
           dict(B=2, T=3, C=5), ("x",), "softmax over a middle axis"),
        Op("attention", attention_forward, attention_backward, _attention_inputs,
           dict(B=2, H=2, T=4, D=3), ("q", "k", "v"), "causal"),
        Op("attention_noncausal", functools.partial(attention_forward, causal=False), attention_backward,
           _attention_inputs, dict(B=2, H=2, T=4, D=3), ("q", "k", "v"), "not causal"),
        Op("dropout", functools.partial(dropout_forward, p=0.25, rng=1234), dropout_backward, _elementwise_inputs,
           dict(N=4, C=6), ("x",), "p=0.25, a fixed seeded mask"),
        Op("attention_dropout", functools.partial(attention_forward, dropout=0.2, rng=99), attention_backward,
           _attention_inputs, dict(B=2, H=2, T=4, D=3), ("q", "k", "v"), "causal, dropout 0.2 on the weights"),
        Op("attention_blocked", in_8_blocks(attention_blocked_forward), attention_blocked_backward, _attention_inputs,
           dict(B=2, H=2, T=5, D=3), ("q", "k", "v"), "causal, queries in blocks of ceil(T/8) >= 2 rows "
           "(3 blocks at T=5)"),
        Op("cross_entropy", cross_entropy_forward, cross_entropy_backward, _cross_entropy_inputs,
           dict(B=2, T=4, V=5), ("logits", "targets"), "ignore_index=-1"),
        Op("flash_attention", functools.partial(flash_attention_forward, block_q=2, block_k=2),
           flash_attention_backward, _attention_inputs, dict(B=2, H=2, T=5, D=3), ("q", "k", "v"),
           "causal, tiles of 2 x 2 (the last one partial: T=5)"),
        Op("flash_attention_noncausal", functools.partial(flash_attention_forward, causal=False, block_q=2, block_k=3),
           flash_attention_backward, _attention_inputs, dict(B=2, H=2, T=5, D=3), ("q", "k", "v"),
           "not causal, tiles of 2 queries x 3 keys"),
        Op("flash_attention_kv", functools.partial(flash_attention_forward, block_q=2, block_k=3),
           flash_attention_backward, _attention_cached_inputs, dict(B=2, H=2, T=5, D=3), ("q", "k", "v"),
           "causal, the queries the last T of T+3 keys (a KV cache), tiles of 2 x 3"),
        Op("rmsnorm", rmsnorm_forward, rmsnorm_backward, _rmsnorm_inputs, dict(N=4, C=6), ("x", "w")),
        Op("rope", rope_forward, rope_backward, _rope_inputs, dict(B=2, H=2, T=5, D=6), ("x", "positions"),
           "positions 7..11 (mid-sequence, as after a KV cache)"),
        Op("rope_rows", functools.partial(rope_forward, theta=500000.0), rope_backward, _rope_rows_inputs,
           dict(B=2, H=2, T=5, D=4), ("x", "positions"), "positions per row (B, T), theta 500000 (Llama 3)"),
        Op("swiglu", swiglu_forward, swiglu_backward, _swiglu_inputs, dict(N=4, C=6), ("gate", "up")),
        Op("attention_gqa", attention_forward, attention_backward, _grouped_attention_inputs,
           dict(B=2, H=4, Hk=2, T=4, D=3), ("q", "k", "v"), "causal, grouped-query: 4 query heads, 2 key/value"),
        Op("attention_blocked_gqa", in_8_blocks(attention_blocked_forward), attention_blocked_backward,
           _grouped_attention_inputs, dict(B=2, H=6, Hk=2, T=5, D=3), ("q", "k", "v"),
           "causal, in query blocks, 6 query heads sharing 2 key/value heads"),
        Op("flash_attention_mqa", functools.partial(flash_attention_forward, block_q=2, block_k=2),
           flash_attention_backward, _grouped_attention_inputs, dict(B=2, H=3, Hk=1, T=5, D=3), ("q", "k", "v"),
           "causal, multi-query (one key/value head for 3 query heads), tiles of 2 x 2"),
    )
})

__all__ = [
    "OPS", "Op", "ALIASES", "resolve",
    "linear_forward", "linear_backward", "embedding_forward", "embedding_backward",
    "layernorm_forward", "layernorm_backward", "gelu_forward", "gelu_backward",
    "softmax_forward", "softmax_backward", "attention_forward", "attention_backward",
    "attention_blocked_forward", "attention_blocked_backward",
    "cross_entropy_forward", "cross_entropy_backward", "dropout_forward", "dropout_backward",
    "flash_attention_forward", "flash_attention_backward", "rmsnorm_forward", "rmsnorm_backward",
    "rope_forward", "rope_backward", "swiglu_forward", "swiglu_backward",
]
