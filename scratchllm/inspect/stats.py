"""Training statistics (``scratchllm train --stats``): how big each step is against the weights, and what the
activations look like.

``training_stats(model, before, grads, caches, trace)`` after an optimizer step, with ``before`` a copy of the
parameters taken just before it:

    per parameter     grad_norm |g|, param_norm |p|, update_ratio |p_after - p_before| / |p_before|: the
                      optimizer's actual step (learning rate, Adam's normalisation, weight decay, clipping all in
                      it), not the raw gradient. Karpathy's rule of thumb: about 1e-3 is healthy.
    per layer         the residual stream's mean and std (the block's output), the attention output's (after the
                      projection, before the residual add), the MLP pre-activation's (GELU's input, or SwiGLU's
                      gate), the fraction of those pre-activations in GELU's flat tails (|x| > 3), and the mean
                      entropy of each head's attention rows (nats; log of the keys seen when uniform)
"""

from __future__ import annotations

import numpy as np

from ..backend import to_numpy


def _norm(a) -> float:
    return float(np.sqrt(np.sum(np.square(to_numpy(a), dtype=np.float64))))


def parameter_stats(params: dict, before: dict, grads: dict) -> dict:
    """name -> {"grad_norm", "param_norm", "update_ratio"} (module docstring)."""
    out = {}
    for name, p in params.items():
        ref = _norm(before[name])
        out[name] = {"grad_norm": _norm(grads[name]), "param_norm": _norm(p),  # a ratio to nothing is None:
                     "update_ratio": _norm(to_numpy(p) - to_numpy(before[name])) / ref if ref else None}  # zero bias
    return out


def attention_entropy(attn_cache) -> list:
    """Mean entropy, in nats, of each head's attention rows, from an ``attention_blocked`` cache (its blocks'
    probabilities) or a ``flash_attention`` one (the probabilities recomputed from q, k and the log-sum-exps,
    64 query rows at a time): (H,) as a list."""
    total, rows = 0.0, 0
    for p in _probabilities(attn_cache):
        p = p.astype(np.float64)  # (B, H, rows, keys)
        ent = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)  # (B, H, rows): 0 log 0 = 0
        total = total + ent.sum(axis=(0, 2))
        rows += ent.shape[0] * ent.shape[2]
    return (total / max(rows, 1)).tolist()


def _probabilities(cache):
    """The attention probabilities of a cache, a block of query rows at a time: (B, H, rows, keys) each."""
    if len(cache) == 5:  # attention_blocked: (q, k, v, blocks, scale)
        for _, _, _, p_cache, _ in cache[3]:
            yield to_numpy(p_cache[0])
        return
    q, k, _, _, lse, causal = (to_numpy(a) if hasattr(a, "shape") else a for a in cache[:6])  # flash_attention
    from ..ops.attention import repeat_kv

    k = repeat_kv(k, q.shape[1] // k.shape[1])  # (B, H, Tk, D)
    T, Tk, scale = q.shape[2], k.shape[2], 1.0 / np.sqrt(q.shape[3])
    for i0 in range(0, T, 64):
        i1 = min(i0 + 64, T)
        S = (q[:, :, i0:i1] @ k.swapaxes(-1, -2)) * scale  # (B, H, rows, Tk)
        if causal:
            S = np.where(np.arange(Tk)[None, :] > np.arange(i0, i1)[:, None] + (Tk - T), -np.inf, S)
        yield np.exp(S - lse[:, :, i0:i1, None])


def _moments(arrays) -> dict:
    x = np.concatenate([to_numpy(a).astype(np.float64).ravel() for a in arrays])
    return {"mean": float(x.mean()), "std": float(x.std())}


def layer_stats(model, caches: list, trace: dict) -> dict:
    """"layer i" -> the activation statistics (module docstring) from the step's ``trace`` (what the model
    recorded, one entry per shard: ``model.trace``) and the caches' attention weights."""
    out = {}
    for i in range(model.n_layer):
        pre = trace[(i, "mlp_pre")]
        tails = sum(int((np.abs(to_numpy(a)) > 3).sum()) for a in pre) / sum(int(a.size) for a in pre)
        heads = [attention_entropy(c[i].get("attn") or c[i]["flash"]) for c in caches]
        out[f"layer {i}"] = {"residual": _moments(trace[(i, "resid")]), "attn_out": _moments(trace[(i, "attn_out")]),
                             "mlp_pre": _moments(pre), "mlp_pre_tail_fraction": tails,
                             "attn_entropy": np.mean(heads, axis=0).tolist()}
    return out


def shard_caches(cache) -> list:
    """The model's own caches inside a runner's: ``DataParallel``'s shards', ``MPIDataParallel``'s (this rank's
    rows; none when it has none), or the model's cache itself."""
    if "shards" in cache:
        return [c for _, c in cache["shards"]]
    if "rows" in cache:
        return [cache["model"]] if "model" in cache else []
    return [cache]


def training_stats(model, before: dict, grads: dict, caches: list, trace: dict) -> dict:
    """Both parts, keyed by parameter name and by "layer i" (``metrics.jsonl``'s "stats" object)."""
    return {**parameter_stats(model.params, before, grads), **layer_stats(model, caches, trace)}
