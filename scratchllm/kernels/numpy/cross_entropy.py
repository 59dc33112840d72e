"""Cross-entropy in NumPy, its row sums in pieces on every CPU thread. Reference: ``scratchllm/ops/cross_entropy.py``.

Same signature, return values and cache as the op (``loss, (logits, lse, t_safe, keep, count)``). Faster than
the textbook by computing the log-sum-exp and the weighted softmax of the backward in pieces of rows, in
place, sums as matrix-vector products, and by subtracting the one-hot target at the targets alone.
``forward_rows`` and ``backward_rows`` take the row loops as arguments: the Numba implementation
(``kernels/cpu/cross_entropy.py``) passes its fused ones.
"""

from __future__ import annotations

import numpy as np

from ..threads import parallel_chunks


def cross_entropy_forward(logits, targets, ignore_index=-1):
    """``ops.cross_entropy_forward`` on NumPy arrays (checked by the dispatch)."""
    return forward_rows(_logsumexp_pieces, logits, targets, ignore_index)


def cross_entropy_backward(dout, cache):
    """``ops.cross_entropy_backward`` on NumPy arrays (checked by the dispatch): ``(dlogits, None)``."""
    return backward_rows(_weighted_softmax_pieces, dout, cache)


def forward_rows(logsumexp, logits, targets, ignore_index):
    """The op's forward on NumPy arrays, with ``logsumexp(x, lse)`` writing lse (N,) for the rows x (N, V)."""
    V = logits.shape[-1]
    x = logits.reshape(-1, V)  # (N, V)
    t = targets.reshape(-1)  # (N,)
    keep = t != ignore_index  # (N,) (targets out of range were refused by the check)
    t_safe = np.where(keep, t, 0)  # (N,) ignored rows read column 0, then get weight 0
    lse = np.empty(x.shape[0], dtype=x.dtype)  # (N,)
    logsumexp(x, lse)
    picked = x[np.arange(x.shape[0]), t_safe]  # (N,) each row's target logit
    nll = np.where(keep, lse - picked, 0)  # (N,)
    count = max(int(keep.sum()), 1)  # M (at least 1)
    loss = (nll.sum() / count).astype(logits.dtype)  # ()
    return loss, (logits, lse, t_safe, keep, count)


def backward_rows(weighted_softmax, dout, cache):
    """The op's backward on NumPy arrays, with ``weighted_softmax(x, lse, w, dx)`` writing w * softmax(x)."""
    logits, lse, t_safe, keep, count = cache
    V = logits.shape[-1]
    N = lse.shape[0]
    x = logits.reshape(-1, V)  # (N, V)
    scale = np.asarray(dout, dtype=logits.dtype).reshape(()) / count  # () dout / M (count is max(M, 1))
    w = np.where(keep, scale, 0).astype(logits.dtype)  # (N,) per-row weight; 0 for ignored rows
    dx = np.empty_like(x)  # (N, V) w * softmax, recomputed
    weighted_softmax(x, lse, w, dx)
    dx[np.arange(N), t_safe] -= w  # (N, V) minus w * the one-hot target (t_safe: distinct rows, no repeats)
    return dx.reshape(logits.shape), None


def _logsumexp_pieces(x, lse):
    parallel_chunks(lambda r: _logsumexp_rows(x[r], lse[r]), x.shape[0], x.size, np)


def _weighted_softmax_pieces(x, lse, w, dx):
    parallel_chunks(lambda r: _weighted_softmax_rows(x[r], lse[r], w[r], dx[r]), x.shape[0], x.size, np)


def _logsumexp_rows(x, lse):
    """lse = max + log(sum(exp(x - max))) along the rows of a piece x (n, V), into lse (n,)."""
    top = np.take_along_axis(x, x.argmax(axis=-1)[:, None], axis=-1)  # (n, 1) the row max, read at argmax
    e = np.subtract(x, top)  # (n, V) a piece-sized temporary
    np.exp(e, out=e)
    total = e @ np.ones(x.shape[-1], dtype=x.dtype)  # (n,) row sums as a matrix-vector product
    np.add(top[:, 0], np.log(total, out=total), out=lse)


def _weighted_softmax_rows(x, lse, w, dx):
    """dx = w * exp(x - lse) for a piece of rows x (n, V), lse and w (n,)."""
    np.subtract(x, lse[:, None], out=dx)
    np.exp(dx, out=dx)
    dx *= w[:, None]
