"""Inverted dropout: zero each entry with probability p, scale the survivors by 1 / (1 - p)."""

from __future__ import annotations

import numpy as np

from ..backend import get_xp
from ._checks import check_dout, check_float


def dropout_forward(x, p=0.0, rng=None):
    """Training-time dropout with a seeded mask.

    Shapes:
        x (...)  ->  out (...)

    Math:
        mask ~ Bernoulli(1 - p) per entry   (drawn on the host from ``rng``)
        out  = x * mask / (1 - p)
    ``p = 0`` is the identity (no mask is drawn). ``rng``: a numpy Generator, an int seed (the same mask at
    every call, which is what a finite-difference check needs), or a list of Generators, one per entry of x's
    first axis: row b's mask is drawn from ``rng[b]``, so it does not depend on which rows share the call (the
    model draws a batch's masks so, and a batch cut into shards gets the same masks).
    """
    check_float("x", x)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1); got {p!r}")
    if p == 0.0:
        return x, (None, 1.0, x.shape)
    if rng is None:
        raise ValueError("rng must be a numpy.random.Generator, an int seed or a list of Generators (one per row) "
                         "when p > 0")
    xp = get_xp(x)
    if isinstance(rng, (list, tuple)):  # one Generator per row
        if len(rng) != x.shape[0]:
            raise ValueError(f"rng must hold one Generator per row of x ({x.shape[0]}); got {len(rng)}")
        draws = np.stack([row_rng.random(x.shape[1:]) for row_rng in rng])  # (...) row by row
    else:
        draws = np.random.default_rng(rng).random(x.shape)  # (...) default_rng passes a Generator through
    mask = xp.asarray(draws >= p)  # (...) bool: 1 byte per entry instead of a float scale
    scale = 1.0 / (1.0 - p)  # a Python float keeps float32 float32
    out = x * mask * scale  # (...)
    return out, (mask, scale, x.shape)


def dropout_backward(dout, cache):
    """Gradient of ``dropout_forward``: the same mask and scale.

    Shapes:
        dout (...)  ->  (dx (...),)

    Math:
        dx = dout * mask / (1 - p)
    """
    mask, scale, shape = cache
    check_dout(dout, shape)
    if mask is None:
        return (dout,)
    return (dout * mask * scale,)
