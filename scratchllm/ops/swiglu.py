"""SwiGLU, the gated activation of Llama's MLP: ``silu(gate) * up``.

The MLP computes two projections of its input, ``gate`` and ``up``; the gate passes through SiLU (x * sigmoid(x),
"swish") and multiplies the other elementwise (Shazeer, "GLU Variants Improve Transformer", 2020). The textbook:
the forward and backward as their Math reads.
"""

from __future__ import annotations

from ..backend import get_xp
from ._checks import check_dout, check_float, check_same_dtype


def swiglu_forward(gate, up):
    """``silu(gate) * up``, elementwise.

    Shapes:
        gate (...), up (...) of one shape  ->  out (...)

    Math:
        sig  = sigmoid(gate) = 1 / (1 + exp(-gate)) = (1 + tanh(gate / 2)) / 2
        silu = gate * sig
        out  = silu * up
    """
    check_inputs(gate, up)
    xp = get_xp(gate, up)
    sig = 0.5 * (1.0 + xp.tanh(0.5 * gate))  # (...) the tanh form: no exp to overflow for gate << 0
    silu = gate * sig  # (...)
    out = silu * up  # (...)
    cache = (gate, up, sig, silu)
    return out, cache


def swiglu_backward(dout, cache):
    """Gradients of ``swiglu_forward``.

    Shapes:
        dout (...)  ->  dgate (...), dup (...)

    Math (the product rule, then silu's derivative):
        dup   = dout * silu
        dsilu = dout * up
        dgate = dsilu * sig * (1 + gate * (1 - sig))
    since d silu / d gate = sig + gate * sig * (1 - sig) (sigmoid' = sig * (1 - sig)).
    """
    gate, up, sig, silu = cache
    check_dout(dout, gate.shape)
    dout = dout.astype(gate.dtype, copy=False)
    dup = dout * silu  # (...)
    dsilu = dout * up  # (...)
    dgate = dsilu * sig * (1.0 + gate * (1.0 - sig))  # (...)
    return dgate, dup


def check_inputs(gate, up):
    """gate and up float arrays of one shape and dtype: else an error naming the argument."""
    check_float("gate", gate)
    check_float("up", up)
    if gate.shape != up.shape:
        raise ValueError(f"up must have gate's shape {tuple(gate.shape)}; got {tuple(up.shape)}")
    check_same_dtype(gate=gate, up=up)
