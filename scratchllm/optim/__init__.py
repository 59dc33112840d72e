"""Optimizers, gradient clipping and nanoGPT's learning-rate schedule, with torch.optim's names and numbers.

``SGD``, ``Adam``, ``AdamW`` and ``Adagrad`` take the same hyper-parameters (names, defaults, checks) and apply
the same update rules as ``torch.optim`` (its single-tensor path); each class docstring states its rule.

Parameters are a dict ``name -> array`` (NumPy or CuPy, float32 or float64), or a list of param groups
``[{"params": {name: array, ...}, "weight_decay": 0.1, ...}, ...]`` whose entries override the constructor's
values for that group (``decay_groups`` builds nanoGPT's decay / no-decay split). ``opt.step(grads)`` takes a
dict with the same names and updates the arrays IN PLACE: they keep their identity and dtype, ``grads`` is never
modified, and a name that is missing or maps to ``None`` is skipped (torch's ``p.grad is None``). The optimizer
holds the arrays, not the dict: to load new values into a parameter, write into it (``p[...] = new``).

``state_dict()`` returns (and ``load_state_dict`` takes) a plain dict; everything but ``"state"`` is JSON-able
and ``"state"`` is a flat ``str -> array`` mapping (copies, on the parameters' backend), ready for
safetensors after ``to_numpy``::

    {"optimizer": "AdamW",                                     # class name, checked on load
     "param_groups": [{"params": ["wte.weight", ...], "lr": 6e-4, "betas": [0.9, 0.95], ...}, ...],
     "step": {"wte.weight": 12, "ln_f.bias": 12, ...},         # per-parameter step counts (ints)
     "state": {"exp_avg.wte.weight": array, "exp_avg_sq.wte.weight": array, ...}}   # "<buffer>.<name>"

Hyper-parameters are kept as Python floats, so float32 arrays stay float32 under NumPy 2's promotion rules.

The shared machinery (parameter groups, the flat fast path, state dicts) is ``Optimizer`` in ``base.py``.
"""

from __future__ import annotations

import math

from ..backend import get_xp
from ..kernels.flat import flatten_params
from .base import Optimizer, _buffer, _fused_optim
from .utils import _flag, _number, clip_grad_norm, decay_groups, get_lr

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "decay_groups", "clip_grad_norm", "get_lr",
           "flatten_params"]


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, like ``torch.optim.SGD``.

    For each parameter p with gradient g (b: momentum buffer, t: its step count)::

        g = -g                                 if maximize
        g = g + weight_decay * p               if weight_decay != 0
        if momentum != 0:
            b = g                              on the first step (no buffer yet; no dampening)
            b = momentum * b + (1 - dampening) * g   otherwise
            g = g + momentum * b               if nesterov, else g = b
        p = p - lr * g

    Nesterov requires momentum > 0 and dampening == 0.
    """

    _buffers = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def _check_hyper(self, h):
        h = dict(lr=_number("lr", h["lr"]), momentum=_number("momentum", h["momentum"]),
                 dampening=_number("dampening", h["dampening"], lo=None),
                 weight_decay=_number("weight_decay", h["weight_decay"]),
                 nesterov=_flag("nesterov", h["nesterov"]), maximize=_flag("maximize", h["maximize"]))
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening == 0")
        return h

    def _needed(self, h):
        return self._buffers if h["momentum"] != 0 else ()

    def _update(self, p, g, st, step, h):
        if h["maximize"]:
            g = -g
        if h["weight_decay"] != 0:
            g = g + h["weight_decay"] * p
        momentum = h["momentum"]
        if momentum != 0:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = get_xp(p).array(g, dtype=p.dtype)  # a copy: grads stay untouched
            else:
                buf *= momentum
                buf += (1 - h["dampening"]) * g
            g = g + momentum * buf if h["nesterov"] else buf
        p -= h["lr"] * g


class Adam(Optimizer):
    """Adam (Kingma & Ba), like ``torch.optim.Adam``; weight decay is L2 added to the gradient.

    For each parameter p with gradient g at its step t = 1, 2, ... (m, v, v_max start at 0)::

        g = -g                                        if maximize
        g = g + weight_decay * p                      if weight_decay != 0   (AdamW: p = p * (1 - lr * weight_decay))
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v); v = v_max              if amsgrad
        denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        p = p - lr / (1 - beta1^t) * m / denom
    """

    _buffers = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
                 maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    def _check_hyper(self, h):
        betas = h["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        return dict(lr=_number("lr", h["lr"]),
                    betas=(_number("betas[0]", betas[0], 0.0, 1.0), _number("betas[1]", betas[1], 0.0, 1.0)),
                    eps=_number("eps", h["eps"]), weight_decay=_number("weight_decay", h["weight_decay"]),
                    amsgrad=_flag("amsgrad", h["amsgrad"]), maximize=_flag("maximize", h["maximize"]))

    def _needed(self, h):
        return self._buffers if h["amsgrad"] else self._buffers[:2]

    def _update(self, p, g, st, step, h):
        lr, wd, (beta1, beta2) = h["lr"], h["weight_decay"], h["betas"]
        if h["maximize"]:
            g = -g
        if wd != 0:
            if self._decoupled:
                p *= 1 - lr * wd
            else:
                g = g + wd * p
        xp = get_xp(p)
        m, v = _buffer(st, "exp_avg", p), _buffer(st, "exp_avg_sq", p)
        tmp = xp.subtract(g, m, out=xp.empty_like(p))  # one scratch buffer for every temporary below
        tmp *= 1 - beta1
        m += tmp  # m += (1 - beta1) * (g - m), torch's exp_avg.lerp_(grad, 1 - beta1)
        v *= beta2
        xp.multiply(g, g, out=tmp)
        tmp *= 1 - beta2
        v += tmp  # v = beta2 * v + (1 - beta2) * g * g
        if h["amsgrad"]:
            v_max = _buffer(st, "max_exp_avg_sq", p)
            v = xp.maximum(v_max, v, out=v_max)
        xp.sqrt(v, out=tmp)
        tmp /= math.sqrt(1 - beta2**step)
        tmp += h["eps"]  # denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        xp.divide(m, tmp, out=tmp)
        tmp *= lr / (1 - beta1**step)
        p -= tmp  # p -= lr / (1 - beta1^t) * m / denom

    def _update_flat(self, p, g, st, step, h):
        fused = _fused_optim(p)
        if fused is None:
            return super()._update_flat(p, g, st, step, h)
        m, v = _buffer(st, "exp_avg", p), _buffer(st, "exp_avg_sq", p)
        v_max = _buffer(st, "max_exp_avg_sq", p) if h["amsgrad"] else None
        fused.adam_step(p, g, m, v, v_max, step, h, self._decoupled)  # one fused pass for the group


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), like ``torch.optim.AdamW``.

    The rule of ``Adam`` except that weight decay shrinks the parameter before the moment updates,
    ``p = p * (1 - lr * weight_decay)``, instead of being added to the gradient. Default weight_decay 1e-2.
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize)


class Adagrad(Optimizer):
    """Adagrad (Duchi et al.), like ``torch.optim.Adagrad``.

    For each parameter p with gradient g at its step t = 1, 2, ... (s starts at initial_accumulator_value)::

        g = -g                                 if maximize
        g = g + weight_decay * p               if weight_decay != 0
        clr = lr / (1 + (t - 1) * lr_decay)
        s = s + g * g
        p = p - clr * g / (sqrt(s) + eps)
    """

    _buffers = ("sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 maximize=False):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize))

    def _check_hyper(self, h):
        names = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")
        return {**{k: _number(k, h[k]) for k in names}, "maximize": _flag("maximize", h["maximize"])}

    def _update(self, p, g, st, step, h):
        if h["maximize"]:
            g = -g
        if h["weight_decay"] != 0:
            g = g + h["weight_decay"] * p
        clr = h["lr"] / (1 + (step - 1) * h["lr_decay"])
        s = _buffer(st, "sum", p, h["initial_accumulator_value"])
        s += g * g
        p -= clr * (g / (get_xp(p).sqrt(s) + h["eps"]))

    def _update_flat(self, p, g, st, step, h):
        fused = _fused_optim(p)
        if fused is None:
            return super()._update_flat(p, g, st, step, h)
        fused.adagrad_step(p, g, _buffer(st, "sum", p, h["initial_accumulator_value"]), step, h)  # one pass
