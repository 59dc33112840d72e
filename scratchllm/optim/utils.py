"""Helpers around the optimizers: hyper-parameter checks, nanoGPT's decay groups and learning-rate schedule,
and global-norm gradient clipping (re-exported by ``scratchllm.optim``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..backend import get_xp
from ..kernels.flat import cpu_flat_kernels, flat_span


def _number(name, value, lo=0.0, hi=None):
    """``value`` as a Python float with ``lo <= value`` (and ``value < hi``); otherwise ValueError naming it."""
    try:
        if isinstance(value, (bool, np.bool_, str, bytes)):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if math.isnan(v) or (lo is not None and v < lo) or (hi is not None and v >= hi):
        bounds = f"in [{lo}, {hi})" if hi is not None else f">= {lo}" if lo is not None else "not NaN"
        raise ValueError(f"Invalid {name}: {value!r} (must be {bounds})")
    return v


def _flag(name, value):
    if not isinstance(value, (bool, np.bool_, int)) or value not in (0, 1):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def decay_groups(params, weight_decay):
    """nanoGPT's split: ``[{"params": {>= 2-D arrays}, "weight_decay": weight_decay},
    {"params": {0-D and 1-D arrays: biases, LayerNorm}, "weight_decay": 0.0}]`` (both groups always present)."""
    weight_decay = _number("weight_decay", weight_decay)
    return [{"params": {n: p for n, p in params.items() if p.ndim >= 2}, "weight_decay": weight_decay},
            {"params": {n: p for n, p in params.items() if p.ndim < 2}, "weight_decay": 0.0}]


def clip_grad_norm(grads, max_norm, eps=1e-6):
    """Scale the gradients in place so their global L2 norm is at most ``max_norm``, like
    ``torch.nn.utils.clip_grad_norm_`` (norm_type=2). ``grads``: a dict (or sequence) of arrays; None skipped::

        total_norm = || (||g_1||_2, ||g_2||_2, ...) ||_2        (in the gradients' dtype)
        clip_coef  = max_norm / (total_norm + eps)
        g = g * min(clip_coef, 1)                               for every g

    Returns ``total_norm`` (before clipping) as a Python float; 0.0 when there are no gradients. Unlike torch,
    a non-finite total norm leaves the gradients untouched (the caller should skip that step).

    On CuPy nothing is read back to the host (no sync in a training step): the clipping factor stays on the
    device, ``g = g * where(isfinite(total_norm), min(clip_coef, 1), 1)``, and ``total_norm`` is returned as
    a 0-d device array (``float()`` it to read it). Gradients that tile one flat buffer (GPT's) are normed and
    scaled in one pass over it.
    """
    max_norm, eps = _number("max_norm", max_norm), _number("eps", eps)
    arrays = [g for g in (grads.values() if isinstance(grads, Mapping) else grads) if g is not None]
    if not arrays:
        return 0.0
    xp = get_xp(*arrays)
    if xp is not np:
        return _clip_grad_norm_device(xp, arrays, max_norm, eps)
    span = flat_span(arrays)
    fused = cpu_flat_kernels() if span is not None else None
    if span is not None:  # one flat buffer (GPT's gradients): one norm and one scale over it, not one per array
        arrays = [span[0]]
        total = fused.norm(span[0]) if fused is not None else None  # on every core (kernels/cpu/flat.py)
        if total is None:
            total = xp.linalg.norm(span[0])  # () as sqrt(dot(g, g)): one BLAS pass
    else:
        total = xp.linalg.norm(xp.stack([xp.linalg.norm(g.ravel()) for g in arrays]))
    norm = float(total)
    if math.isfinite(norm) and norm > 0:
        coef = max_norm / (total + eps)  # in the norms' dtype, as torch
        if float(coef) < 1:
            for g in arrays:
                if fused is None or not fused.scale(g, coef):
                    g *= coef.astype(g.dtype)
    return norm


def _clip_grad_norm_device(xp, arrays, max_norm, eps):
    """clip_grad_norm on CuPy without a host sync; returns the total norm as a 0-d device array."""
    span = flat_span(arrays)
    if span is not None:  # one flat buffer: one norm, one scale
        arrays = [span[0]]
        total = xp.linalg.norm(span[0])
    else:
        total = xp.linalg.norm(xp.stack([xp.linalg.norm(g.ravel()) for g in arrays]))
    coef = xp.minimum(max_norm / (total + eps), 1.0)  # in the norms' dtype, as torch
    coef = xp.where(xp.isfinite(total), coef, 1.0)  # a non-finite norm leaves the gradients untouched
    for g in arrays:
        g *= coef.astype(g.dtype)
    return total


def get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT's schedule (train.py ``get_lr``) for iteration ``it`` = 0, 1, ...::

        it < warmup_iters:                  learning_rate * (it + 1) / (warmup_iters + 1)
        it > lr_decay_iters:                min_lr
        otherwise:   ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
                     min_lr + 0.5 * (1 + cos(pi * ratio)) * (learning_rate - min_lr)

    When ``lr_decay_iters == warmup_iters`` (where nanoGPT divides by zero) ``it == warmup_iters`` gives min_lr.
    """
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    if lr_decay_iters == warmup_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)
