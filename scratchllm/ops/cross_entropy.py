"""Cross-entropy of logits against integer targets, mean over the targets that are not ignored."""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import get_xp
from ..kernels.cpu import fused_rows, run_rows  # a fused kernel over rows, on every core
from ..threads import parallel_chunks
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
    check_float("logits", logits, ndim_min=1)
    check_int("targets", targets)
    V = logits.shape[-1]
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets must have shape {logits.shape[:-1]} (logits' shape without the last axis); "
                         f"got {targets.shape}")
    xp = get_xp(logits)
    if xp is not np and kernels.enabled() and logits.size:  # fused CUDA kernels (scratchllm/kernels/cross_entropy.py)
        return kernels.cross_entropy_forward(logits, targets, ignore_index)
    x = logits.reshape(-1, V)  # (N, V)
    t = targets.reshape(-1)  # (N,)
    keep = t != ignore_index  # (N,)
    bad = keep & ((t < 0) | (t >= V))  # (N,)
    if xp is np and bool(bad.any()):  # on CuPy a host sync: there a bad target gives a NaN loss instead
        raise ValueError(f"targets must lie in [0, {V}) or equal ignore_index={ignore_index}; "
                         f"got {int(t[bad][0])}")
    t_safe = xp.where(keep & ~bad, t, 0)  # (N,) ignored (and bad) rows read column 0, then get weight 0
    lse = xp.empty(x.shape[0], dtype=x.dtype)  # (N,), rows cut into cache-sized pieces on every CPU thread
    if fused_rows(x, lse):  # one loop per row (scratchllm/kernels/cpu/softmax.py), checked once here
        from ..kernels.cpu import softmax as fused
        run_rows(fused.logsumexp_rows, fused.logsumexp_rows_par, (x, lse), (), x.size)  # on every core
    else:
        parallel_chunks(lambda r: _logsumexp_rows(x[r], lse[r]), x.shape[0], x.size, xp)
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


def _logsumexp_rows(x, lse):
    """lse = max + log(sum(exp(x - max))) along the rows of a piece x (n, V), into lse (n,)."""
    xp = get_xp(x)
    top = xp.take_along_axis(x, x.argmax(axis=-1)[:, None], axis=-1)  # (n, 1) the row max, read at argmax
    e = xp.subtract(x, top)  # (n, V) a piece-sized temporary
    xp.exp(e, out=e)
    total = e @ xp.ones(x.shape[-1], dtype=x.dtype)  # (n,) row sums as a matrix-vector product
    xp.add(top[:, 0], xp.log(total, out=total), out=lse)


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
    xp = get_xp(logits)
    dout_shape = getattr(dout, "shape", ())
    if dout_shape not in ((), (1,)):
        raise ValueError(f"dout must be a scalar or a 0-d array (the loss is a scalar); got shape {dout_shape}")
    if xp is not np and kernels.enabled() and logits.size:  # the fused CUDA kernel
        return kernels.cross_entropy_backward(dout, cache)
    V = logits.shape[-1]
    N = lse.shape[0]
    x = logits.reshape(-1, V)  # (N, V)
    scale = xp.asarray(dout, dtype=logits.dtype).reshape(()) / count  # () dout / M (count is max(M, 1))
    w = xp.where(keep, scale, 0).astype(logits.dtype)  # (N,) per-row weight; 0 for ignored rows
    dx = xp.empty_like(x)  # (N, V) w * softmax, recomputed, in cache-sized pieces on every CPU thread
    if fused_rows(x, lse, w, dx):  # the fused CPU kernel, checked once here
        from ..kernels.cpu import softmax as fused
        run_rows(fused.weighted_softmax_rows, fused.weighted_softmax_rows_par, (x, lse, w, dx), (), x.size)
    else:
        parallel_chunks(lambda r: _weighted_softmax_rows(x[r], lse[r], w[r], dx[r]), N, x.size, xp)
    dx[xp.arange(N), t_safe] -= w  # (N, V) minus w * the one-hot target (t_safe: distinct rows, no repeats)
    return dx.reshape(logits.shape), None


def _weighted_softmax_rows(x, lse, w, dx):
    """dx = w * exp(x - lse) for a piece of rows x (n, V), lse and w (n,)."""
    xp = get_xp(x)
    xp.subtract(x, lse[:, None], out=dx)
    xp.exp(dx, out=dx)
    dx *= w[:, None]
