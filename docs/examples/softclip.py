"""Soft clipping, y = a * tanh(x / a), with a learned limit a per channel: an op of your own, checked with

    scratchllm gradcheck docs/examples/softclip.py

The file defines the op contract (forward, backward) and example_inputs(); nothing else is needed.

Math, for x (N, C) and a (C,) > 0, per element:

    u   = x / a
    t   = tanh(u)
    out = a * t

    d out / d x = a * (1 - t^2) * (1 / a)               = 1 - t^2
    d out / d a = t + a * (1 - t^2) * (-x / a^2)        = t - u * (1 - t^2)

a is broadcast over the N rows in the forward, so its gradient sums over them in the backward.
"""

import numpy as np


def forward(x, a):
    """x (N, C), a (C,) -> out (N, C)."""
    u = x / a  # (N, C)
    t = np.tanh(u)  # (N, C)
    out = a * t  # (N, C)
    return out, (u, t)


def backward(dout, cache):
    """dout (N, C) -> (dx (N, C), da (C,))."""
    u, t = cache
    dt = 1 - t * t  # d tanh(u) / du, (N, C)
    dx = dout * dt  # (N, C)
    da = (dout * (t - u * dt)).sum(axis=0)  # (C,): summed over the rows a was broadcast to
    return dx, da


def example_inputs():
    """Inputs that reach tanh's curved part and its flat tails: x spread over about +-4a."""
    rng = np.random.default_rng(0)
    x = 2.0 * rng.standard_normal((6, 8))
    a = 0.5 + rng.random(8)
    return x, a
