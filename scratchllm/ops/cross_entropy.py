"""Cross-entropy of logits against integer targets, mean over the targets that are not ignored."""

from __future__ import annotations

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
    """
    check_float("logits", logits, ndim_min=1)
    check_int("targets", targets)
    V = logits.shape[-1]
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets must have shape {logits.shape[:-1]} (logits' shape without the last axis); "
                         f"got {targets.shape}")
    xp = get_xp(logits)
    x = logits.reshape(-1, V)  # (N, V)
    t = targets.reshape(-1)  # (N,)
    keep = t != ignore_index  # (N,)
    bad = keep & ((t < 0) | (t >= V))  # (N,)
    if bool(bad.any()):
        raise ValueError(f"targets must lie in [0, {V}) or equal ignore_index={ignore_index}; "
                         f"got {int(t[bad][0])}")
    t_safe = xp.where(keep, t, 0)  # (N,) ignored rows read column 0, then get weight 0
    m = x.max(axis=-1, keepdims=True)  # (N, 1)
    lse = m[:, 0] + xp.log(xp.exp(x - m).sum(axis=-1))  # (N,)
    picked = xp.take_along_axis(x, t_safe[:, None], axis=-1)[:, 0]  # (N,)
    count = int(keep.sum())
    nll = xp.where(keep, lse - picked, 0)  # (N,)
    loss = (nll.sum() / max(count, 1)).astype(logits.dtype)  # ()
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
    xp = get_xp(logits)
    dout_shape = getattr(dout, "shape", ())
    if dout_shape not in ((), (1,)):
        raise ValueError(f"dout must be a scalar or a 0-d array (the loss is a scalar); got shape {dout_shape}")
    V = logits.shape[-1]
    N = lse.shape[0]
    x = logits.reshape(-1, V)  # (N, V)
    scale = xp.asarray(dout, dtype=logits.dtype).reshape(()) / max(count, 1)  # () dout / M
    w = xp.where(keep, scale, 0).astype(logits.dtype)  # (N,) per-row weight; 0 for ignored rows
    dx = xp.exp(x - lse[:, None])  # (N, V) softmax, recomputed
    dx[xp.arange(N), t_safe] -= 1.0  # (N, V) minus the one-hot target (t_safe: distinct rows, no repeats)
    dx *= w[:, None]  # (N, V)
    return dx.reshape(logits.shape), None
