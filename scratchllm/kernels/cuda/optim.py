"""Fused Adam / AdamW / Adagrad updates as CuPy ElementwiseKernels. Reference: ``scratchllm/optim/``.

Each call updates a whole param group in ONE launch: ``p``, ``g`` and the state buffers are flat 1-D arrays
(the contiguous stretch of one buffer that the group's parameters are views of; see ``Optimizer._step_flat``),
updated in place. The per-parameter NumPy/CuPy path costs about ten launches per parameter instead.

The scalars follow the reference exactly: everything that depends only on the step (bias corrections,
step size, decay factor) is computed on the host in double precision, as the Python code does, and passed
in the arrays' dtype (what NumPy does with a Python float times a float32 array).

Launch configuration: CuPy's ElementwiseKernel over the flat buffers, float32 and float64 (placeholder T).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._common import check_dtype, cupy

_ADAM_BODY = """
    T grad = maximize ? -g : g;
    if (weight_decay != T(0)) {
        if (decoupled) p = p * decay;            // AdamW: p = p * (1 - lr * weight_decay)
        else grad = grad + weight_decay * p;     // Adam: L2 added to the gradient
    }
    m = m + one_minus_beta1 * (grad - m);        // exp_avg.lerp_(grad, 1 - beta1)
    v = v * beta2 + one_minus_beta2 * (grad * grad);
    {VMAX}
    const T denom = sqrt({V}) / bias_correction2_sqrt + eps;
    p = p - step_size * (m / denom);             // step_size = lr / (1 - beta1^t)
"""
_ADAM_IN = ("T g, T weight_decay, T decay, T one_minus_beta1, T beta2, T one_minus_beta2, "
            "T bias_correction2_sqrt, T eps, T step_size, int32 maximize, int32 decoupled")

ELEMENTWISE = {
    "scratchllm_adam_step": (_ADAM_IN, "T p, T m, T v", _ADAM_BODY.replace("{VMAX}", "").replace("{V}", "v")),
    # AMSGrad: the denominator uses the running max of v (v itself keeps the plain average, as torch's)
    "scratchllm_adam_amsgrad_step": (_ADAM_IN, "T p, T m, T v, T v_max", _ADAM_BODY.replace(
        "{VMAX}", "v_max = v_max > v ? v_max : v;").replace("{V}", "v_max")),
    # Adagrad: s += g^2;  p -= clr * g / (sqrt(s) + eps),  clr = lr / (1 + (t - 1) * lr_decay)
    "scratchllm_adagrad_step": ("T g, T weight_decay, T clr, T eps, int32 maximize", "T p, T s", """
        T grad = maximize ? -g : g;
        if (weight_decay != T(0)) grad = grad + weight_decay * p;
        s = s + grad * grad;
        p = p - clr * (grad / (sqrt(s) + eps));
    """),
}


@functools.lru_cache(maxsize=None)
def _ek(name):
    in_params, out_params, body = ELEMENTWISE[name]
    return cupy().ElementwiseKernel(in_params, out_params, body, name)


def adam_step(p, g, m, v, v_max, step, h, decoupled):
    """One Adam (``decoupled=False``) or AdamW step over flat buffers, in place. ``h``: the group's
    hyper-parameters (lr, betas, eps, weight_decay, amsgrad, maximize); ``step``: t = 1, 2, ...;
    ``v_max`` is None unless amsgrad."""
    check_dtype(p)
    t = p.dtype.type
    lr, wd, (beta1, beta2) = h["lr"], h["weight_decay"], h["betas"]
    args = (g, t(wd), t(1 - lr * wd), t(1 - beta1), t(beta2), t(1 - beta2), t(math.sqrt(1 - beta2**step)),
            t(h["eps"]), t(lr / (1 - beta1**step)), np.int32(h["maximize"]), np.int32(decoupled))
    if h["amsgrad"]:
        _ek("scratchllm_adam_amsgrad_step")(*args, p, m, v, v_max)
    else:
        _ek("scratchllm_adam_step")(*args, p, m, v)


def adagrad_step(p, g, s, step, h):
    """One Adagrad step over flat buffers, in place (``s``: the running sum of squares)."""
    check_dtype(p)
    t = p.dtype.type
    clr = h["lr"] / (1 + (step - 1) * h["lr_decay"])
    _ek("scratchllm_adagrad_step")(g, t(h["weight_decay"]), t(clr), t(h["eps"]), np.int32(h["maximize"]), p, s)
