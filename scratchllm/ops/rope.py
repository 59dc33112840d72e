"""Rotary position embeddings (RoPE): each query and key vector rotated by angles that grow with its position.

Llama has no table of learned positions. Instead, before attention, q and k are turned pair by pair of coordinates
through angles proportional to the position (Su et al., "RoFormer", 2021): the score q_s . k_t then depends on the
positions only through t - s, since rotations compose (R(s)^T R(t) = R(t - s)). The pairs are Hugging Face's
"rotate_half" layout: coordinate i goes with coordinate i + D/2. The backward is the inverse rotation, since a
rotation's transpose is its inverse. The textbook: the forward and backward as their Math reads.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_xp
from ._checks import check_dout, check_float, check_int


def rope_forward(x, positions, theta=10000.0):
    """Rotate each pair (x[..., i], x[..., i + D/2]) of every vector by the angle ``position * theta^(-2i/D)``.

    Shapes:
        x (B, H, T, D), D even; positions int (T,) or (B, T): each vector's position in its sequence (so a KV
        cache's new tokens continue at the cached length)  ->  out (B, H, T, D)

    Math (i = 0 .. D/2 - 1; the angles in float64, then in x's dtype):
        inv_freq[i] = theta^(-2i / D)
        ang[t, i]   = positions[t] * inv_freq[i]
        cos, sin    = cos(ang), sin(ang), each written twice side by side: (T, D)
        rotate_half(x) = concat(-x[..., D/2:], x[..., :D/2])
        out = x * cos + rotate_half(x) * sin
    i.e. per pair (a, b) = (x[i], x[i + D/2]):  out[i] = a cos - b sin,  out[i + D/2] = b cos + a sin.
    """
    check_inputs(x, positions)
    xp = get_xp(x)
    D = x.shape[-1]
    inv_freq = 1.0 / theta ** (xp.arange(0, D, 2, dtype=np.float64) / D)  # (D/2,)
    ang = xp.asarray(positions).astype(np.float64)[..., None] * inv_freq  # (T, D/2) or (B, T, D/2)
    ang = xp.concatenate([ang, ang], axis=-1)  # (T, D) or (B, T, D)
    if ang.ndim == 3:
        ang = ang[:, None]  # (B, 1, T, D): one position per row, the same for every head
    cos, sin = xp.cos(ang).astype(x.dtype), xp.sin(ang).astype(x.dtype)
    out = x * cos + rotate_half(x) * sin  # (B, H, T, D)
    cache = (cos, sin, x.shape)
    return out, cache


def rope_backward(dout, cache):
    """Gradients of ``rope_forward``: the rotation by minus the angles (positions get no gradient).

    Shapes:
        dout (B, H, T, D)  ->  dx (B, H, T, D), None

    Math: out = R x with R a rotation per pair, so dx = R^T dout = R^-1 dout, the same pairs turned back:
        dx = dout * cos - rotate_half(dout) * sin
    per pair (a, b) = (dout[i], dout[i + D/2]):  dx[i] = a cos + b sin,  dx[i + D/2] = b cos - a sin.
    """
    cos, sin, shape = cache
    check_dout(dout, shape)
    dout = dout.astype(cos.dtype, copy=False)
    dx = dout * cos - rotate_half(dout) * sin  # (B, H, T, D)
    return dx, None


def rotate_half(x):
    """concat(-x[..., D/2:], x[..., :D/2]): each pair (a, b) of coordinates i, i + D/2 sent to (-b, a)."""
    xp = get_xp(x)
    half = x.shape[-1] // 2
    return xp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def check_inputs(x, positions):
    """x (B, H, T, D) with D even, positions int (T,) or (B, T): else an error naming the argument."""
    check_float("x", x, ndim=4)
    B, H, T, D = x.shape
    if D % 2:
        raise ValueError(f"x's last axis (D) must be even: rotary embeddings turn pairs of coordinates; got D={D}")
    check_int("positions", positions)
    if tuple(positions.shape) not in ((T,), (B, T)):
        raise ValueError(f"positions must have shape (T,) = ({T},) or (B, T) = ({B}, {T}); got "
                         f"{tuple(positions.shape)}")
