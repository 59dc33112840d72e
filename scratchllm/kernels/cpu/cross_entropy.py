"""Cross-entropy with its two row loops as Numba kernels (``logsumexp_rows`` and ``weighted_softmax_rows`` in
``softmax.py``), rows on every core. Reference: ``scratchllm/ops/cross_entropy.py``; the code around the row
loops is the NumPy implementation's (``kernels/numpy/cross_entropy.py``)."""

from __future__ import annotations

from ..numpy.cross_entropy import backward_rows, forward_rows
from . import run_rows
from . import softmax as fused


def cross_entropy_forward(logits, targets, ignore_index=-1):
    """``ops.cross_entropy_forward`` on C-contiguous float32/float64 NumPy logits (checked by the dispatch)."""
    return forward_rows(_logsumexp, logits, targets, ignore_index)


def cross_entropy_backward(dout, cache):
    """``ops.cross_entropy_backward`` on C-contiguous NumPy logits and lse: ``(dlogits, None)``."""
    return backward_rows(_weighted_softmax, dout, cache)


def _logsumexp(x, lse):
    run_rows(fused.logsumexp_rows, fused.logsumexp_rows_par, (x, lse), (), x.size)


def _weighted_softmax(x, lse, w, dx):
    run_rows(fused.weighted_softmax_rows, fused.weighted_softmax_rows_par, (x, lse, w, dx), (), x.size)
