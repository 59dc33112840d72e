"""Instruments for studying a network: what it attends to, what a prediction depends on, how training moves it.

For one sequence, from a model's own forward and explicit backward (GPT or Llama, eval mode):

    attention_maps(model, ids)            per layer, the (H, T, T) attention probabilities the forward computed
    next_token_losses(model, ids)         per position t, -log p(ids[t+1] | ids[:t+1])
    saliency(model, ids, target=None)     per input token, |d log p(target | prompt) / d its input embedding|

and, while training (``scratchllm train --stats``), ``training_stats`` (``stats.py``). docs/inspect.md.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..backend import to_numpy
from .stats import training_stats  # noqa: F401


def _sequence(ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu" or len(ids) < 1:
        raise ValueError(f"ids must be one sequence of token ids, an integer array of shape (T,); got "
                         f"{ids.dtype} of shape {ids.shape}")
    return ids.astype(np.int64)


def _forward(model, ids):
    """Logits (T, V) and caches of one sequence, in eval mode, with the whole-matrix attention (its weights are
    what the maps show; flash attention keeps none)."""
    ids = _sequence(ids).reshape(1, -1)
    training, cfg = model.training, model.cfg
    model.eval()
    model.cfg = dataclasses.replace(cfg, attention="full")
    try:
        logits, _, caches = model.forward(ids)
    finally:
        model.cfg = cfg
        model.train(training)
    return logits, caches


def attention_maps(model, ids) -> list:
    """Per layer, the attention probabilities (H, T, T) of the sequence ``ids``: row t is query t's distribution
    over the keys 0..t (zero above the diagonal), exactly the ``p`` the forward's softmax produced (read from
    each query block's cache)."""
    _, caches = _forward(model, ids)
    maps = []
    for i in range(model.n_layer):
        q, k, _, blocks, _ = caches[i]["attn"]
        T, Tk = q.shape[2], k.shape[2]
        full = np.zeros((q.shape[1], T, Tk), dtype=np.float64)  # (H, T, Tk)
        for i0, i1, e, p_cache, _ in blocks:
            full[:, i0:i1, :e] = to_numpy(p_cache[0][0])  # this block's rows, the keys they see
        maps.append(full)
    return maps


def _log_softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def next_token_losses(model, ids) -> np.ndarray:
    """(T - 1,): the cross-entropy of each next token, ``-log p(ids[t + 1] | ids[:t + 1])``, in nats."""
    ids = _sequence(ids)
    logits, _ = _forward(model, ids)
    logp = _log_softmax(to_numpy(logits)[0].astype(np.float64))  # (T, V)
    return -logp[np.arange(len(ids) - 1), ids[1:]]


def saliency(model, ids, target=None) -> dict:
    """What the next prediction after ``ids`` depends on: the gradient of ``log p(target | ids)`` (at the last
    position; ``target`` None: the model's most likely next token) with respect to each position's input embedding
    (the token's embedding row, plus GPT's position row), by the model's explicit backward (``input_gradient``).

    Returns ``{"target", "logprob", "gradient" (T, C), "saliency" (T,)}``, saliency the gradient's L2 norm per
    position. The backward starts from ``d log p_target / d logits = onehot(target) - softmax(logits)`` there.
    """
    ids = _sequence(ids)
    logits, caches = _forward(model, ids)
    last = to_numpy(logits)[0, -1].astype(np.float64)  # (V,)
    logp = _log_softmax(last)
    target = int(np.argmax(last)) if target is None else int(target)
    if not 0 <= target < last.shape[0]:
        raise ValueError(f"target must be a token id in [0, {last.shape[0]}); got {target}")
    dlogits = np.zeros((1, len(ids), last.shape[0]), dtype=model.dtype)  # only the last position's log-prob
    dlogits[0, -1] = -np.exp(logp)
    dlogits[0, -1, target] += 1.0
    grad = to_numpy(model.input_gradient(model.xp.asarray(dlogits), caches))[0]  # (T, C)
    return {"target": target, "logprob": float(logp[target]), "gradient": grad,
            "saliency": np.linalg.norm(grad.astype(np.float64), axis=-1)}
