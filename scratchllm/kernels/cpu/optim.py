"""Fused Adam / AdamW / Adagrad updates as Numba CPU kernels. Reference: ``scratchllm/optim.py``.

The same calls as the CUDA kernels in ``scratchllm/kernels/optim.py``: one call updates a whole param group's
flat buffers in place (``Optimizer._step_flat``), in cache-sized pieces on every core. The NumPy update is
about 14 passes over each piece; here one loop reads p, g and the state once and writes them once.

The arithmetic is the NumPy code's, operation for operation and in the same order, with no fastmath (no
fused multiply-adds): float32 results are bit-identical to the NumPy path (tests/kernels/test_cpu_kernels.py).
Scalars that depend only on the step are computed in double precision and passed in the arrays' dtype, as
NumPy does with a Python float times a float32 array.
"""

from __future__ import annotations

import math

import numpy as np

from ...threads import parallel_chunks
from . import jit


@jit()
def _adam(p, g, m, v, v_max, amsgrad, maximize, decoupled, weight_decay, decay, one_minus_beta1, beta2,
          one_minus_beta2, bias_correction2_sqrt, eps, step_size):
    for i in range(p.shape[0]):
        grad = -g[i] if maximize else g[i]
        if weight_decay != 0:
            if decoupled:
                p[i] = p[i] * decay  # AdamW: p = p * (1 - lr * weight_decay)
            else:
                grad = grad + weight_decay * p[i]  # Adam: L2 added to the gradient
        m[i] = m[i] + (grad - m[i]) * one_minus_beta1  # exp_avg.lerp_(grad, 1 - beta1)
        v[i] = v[i] * beta2 + grad * grad * one_minus_beta2
        denom_v = v[i]
        if amsgrad:  # the denominator uses the running max of v
            v_max[i] = v_max[i] if v_max[i] > v[i] else v[i]
            denom_v = v_max[i]
        denom = np.sqrt(denom_v) / bias_correction2_sqrt + eps
        p[i] = p[i] - m[i] / denom * step_size  # step_size = lr / (1 - beta1^t)


@jit()
def _adagrad(p, g, s, maximize, weight_decay, clr, eps):
    for i in range(p.shape[0]):
        grad = -g[i] if maximize else g[i]
        if weight_decay != 0:
            grad = grad + weight_decay * p[i]
        s[i] = s[i] + grad * grad
        p[i] = p[i] - grad / (np.sqrt(s[i]) + eps) * clr


def adam_step(p, g, m, v, v_max, step, h, decoupled):
    """One Adam (``decoupled=False``) or AdamW step over flat NumPy buffers, in place (see the CUDA twin)."""
    t = p.dtype.type
    lr, wd, (beta1, beta2) = h["lr"], h["weight_decay"], h["betas"]
    scalars = (t(wd), t(1 - lr * wd), t(1 - beta1), t(beta2), t(1 - beta2), t(math.sqrt(1 - beta2**step)),
               t(h["eps"]), t(lr / (1 - beta1**step)))
    amsgrad, maximize = bool(h["amsgrad"]), bool(h["maximize"])
    vm = v_max if amsgrad else v  # a placeholder the kernel never touches without amsgrad
    parallel_chunks(lambda r: _adam(p[r], g[r], m[r], v[r], vm[r], amsgrad, maximize, bool(decoupled), *scalars),
                    p.size, p.size, np)  # not fused=True: 7 arrays per element, threads pay from PARALLEL_MIN


def adagrad_step(p, g, s, step, h):
    """One Adagrad step over flat NumPy buffers, in place (``s``: the running sum of squares)."""
    t = p.dtype.type
    clr = h["lr"] / (1 + (step - 1) * h["lr_decay"])
    parallel_chunks(lambda r: _adagrad(p[r], g[r], s[r], bool(h["maximize"]), t(h["weight_decay"]), t(clr),
                                       t(h["eps"])), p.size, p.size, np)
