"""Cross-entropy of logits against integer targets, mean over the targets that are not ignored.

The textbook: the forward and backward as their Math reads. Faster ways to compute the same numbers (fused
Numba row loops, CUDA kernels, NumPy in pieces on every thread) are registered implementations in
``scratchllm/kernels/``; the model runs them through ``scratchllm.kernels.dispatch``.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_xp
from ._checks import check_float, check_int


def cross_entropy_forward(logits, targets, ignore_index=-1):
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits)``.

    Shapes:
        logits (..., V), targets int (...)  ->  loss () (a 0-d array of logits' dtype)

    Math (n runs over the N = prod(...) rows; M = number of rows whose target != ignore_index):
        lse[n]  = log(sum_v exp(logits[n, v]))      (computed as max + log(sum(exp(logits - max))))
        loss    = sum over kept n of (lse[n] - logits[n, targets[n]]) / M
    When every target is ignored, M = 0: the loss is 0 and every gradient is 0 (PyTorch gives NaN).
    A target outside [0, V) raises ValueError on NumPy. On CuPy that check would read a value back to the
    host (a sync in every training step), so there such a target makes its row's loss, and so the mean,
    NaN instead; M stays a 0-d device array for the same reason (the cache keeps max(M, 1)).
    """
    check_inputs(logits, targets, ignore_index)
    xp = get_xp(logits)
    V = logits.shape[-1]
    x = logits.reshape(-1, V)  # (N, V)
    t = targets.reshape(-1)  # (N,)
    keep = t != ignore_index  # (N,) the rows that count
    bad = keep & ((t < 0) | (t >= V))  # (N,) only on CuPy (NumPy refused them above)
    t_safe = xp.where(keep & ~bad, t, 0)  # (N,) ignored (and bad) rows read column 0, then get weight 0
    top = x.max(axis=-1, keepdims=True)  # (N, 1)
    lse = top[:, 0] + xp.log(xp.exp(x - top).sum(axis=-1))  # (N,)
    picked = x[xp.arange(x.shape[0]), t_safe]  # (N,) each row's target logit
    nll = xp.where(keep, lse - picked, 0)  # (N,)
    if xp is np:
        count = max(int(keep.sum()), 1)  # M (at least 1)
    else:  # M as a 0-d device array, and NaN for bad targets: no host sync
        count = xp.maximum(keep.sum(), 1).astype(logits.dtype)
        nll = xp.where(bad, nll.dtype.type(np.nan), nll)
    loss = (nll.sum() / count).astype(logits.dtype)  # ()
    cache = (logits, lse, t_safe, keep, count)  # logits by reference: backward recomputes softmax
    return loss, cache


def cross_entropy_backward(dout, cache):
    """Gradient of ``cross_entropy_forward`` with respect to the logits (targets get ``None``).

    Shapes:
        dout () or a Python/NumPy scalar  ->  (dlogits (..., V), None)

    Math (per kept row n; ignored rows get 0):
        dlogits[n, :] = dout * (softmax(logits[n]) - onehot(targets[n])) / M
    softmax(logits[n]) = exp(logits[n] - lse[n]) is recomputed here instead of cached: it is as large
    as the logits, and the logits are already held by the caller.
    """
    logits, lse, t_safe, keep, count = cache
    check_dout(dout)
    xp = get_xp(logits)
    V = logits.shape[-1]
    x = logits.reshape(-1, V)  # (N, V)
    N = x.shape[0]
    scale = xp.asarray(dout, dtype=logits.dtype).reshape(()) / count  # () dout / M (count is max(M, 1))
    w = xp.where(keep, scale, 0).astype(logits.dtype)[:, None]  # (N, 1) per-row weight; 0 for ignored rows
    p = xp.exp(x - lse[:, None])  # (N, V) softmax(logits), recomputed
    onehot = xp.zeros_like(p)  # (N, V)
    onehot[xp.arange(N), t_safe] = 1
    dx = w * (p - onehot)  # (N, V)
    return dx.reshape(logits.shape), None


def check_inputs(logits, targets, ignore_index=-1):
    """logits (..., V) float, targets int (...), and on NumPy every kept target in [0, V): else an error naming
    the argument."""
    check_float("logits", logits, ndim_min=1)
    check_int("targets", targets)
    V = logits.shape[-1]
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets must have shape {logits.shape[:-1]} (logits' shape without the last axis); "
                         f"got {targets.shape}")
    if get_xp(logits) is np:  # on CuPy a host sync: there a bad target gives a NaN loss instead
        t = targets.reshape(-1)
        bad = (t != ignore_index) & ((t < 0) | (t >= V))
        if bool(bad.any()):
            raise ValueError(f"targets must lie in [0, {V}) or equal ignore_index={ignore_index}; "
                             f"got {int(t[bad][0])}")


def check_dout(dout):
    """The loss is a scalar: dout must be one (a Python or NumPy scalar, or a 0-d array)."""
    dout_shape = getattr(dout, "shape", ())
    if dout_shape not in ((), (1,)):
        raise ValueError(f"dout must be a scalar or a 0-d array (the loss is a scalar); got shape {dout_shape}")
