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

Flat fast path: when a group's parameters exactly tile one stretch of a single contiguous buffer (see
``flatten_params``; GPT allocates its parameters so, weights >= 2-D first, so both ``decay_groups`` groups are
one stretch each) and the gradients are views of another buffer laid out alike (GPT.backward returns them
so), ``step`` updates the group with ONE update over the buffer instead of one per parameter: a single fused
kernel launch for Adam, AdamW and Adagrad on CuPy (``scratchllm/kernels/optim.py``); on NumPy the same
expressions over one chunk of the buffer per CPU thread. The state buffers are then flat too, each
parameter's state array a view of them, so ``state_dict`` and ``load_state_dict`` see no difference. Any other
layout takes the per-parameter loop; both give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from . import kernels
from .backend import get_xp, to_numpy
from .flat import flat_span, flatten_params
from .optim_utils import _flag, _number, clip_grad_norm, decay_groups, get_lr
from .threads import parallel_chunks

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "decay_groups", "clip_grad_norm", "get_lr",
           "flatten_params"]


def _fused_optim(p):
    """The module of fused update kernels for ``p``'s arrays, or None for the plain update: the CUDA
    kernels (``kernels/optim.py``) for CuPy, the Numba ones (``kernels/cpu/optim.py``) for NumPy."""
    if get_xp(p) is not np:
        return kernels if kernels.enabled() else None
    if not kernels.cpu_kernel_for(p):  # a float32 or float64 NumPy buffer (and Numba installed)
        return None
    from .kernels.cpu import optim as cpu_optim

    return cpu_optim


def _buffer(st, key, p, fill=0.0):
    """The state array ``st[key]``, created as ``full_like(p, fill)`` (same backend and dtype) on first use."""
    if key not in st:
        st[key] = get_xp(p).full_like(p, fill)
    return st[key]


class Optimizer:
    """Base class: param groups, validation, per-parameter state and the step loop.

    A subclass sets ``_buffers`` (its state array names), ``_check_hyper`` (validates one group's
    hyper-parameters, returns them as Python scalars), ``_needed`` (buffers a stepped parameter must have)
    and ``_update(p, g, state, step, hyper)`` (one parameter's in-place update; ``g`` must not be modified).
    """

    _buffers: tuple = ()

    def __init__(self, params, defaults):
        self.defaults = self._check_hyper(defaults)
        groups = [{"params": params}] if isinstance(params, Mapping) else list(params)
        self.param_groups, self.state, self.steps, ids = [], {}, {}, set()
        for i, group in enumerate(groups):
            if not isinstance(group, Mapping) or not isinstance(group.get("params"), Mapping):
                raise ValueError(f"params: group {i} must be a dict with a 'params' dict of name -> array")
            unknown = sorted(set(group) - set(self.defaults) - {"params"})
            if unknown:
                raise ValueError(f"params: group {i} has unknown option(s) {unknown}; known: {sorted(self.defaults)}")
            hyper = self._check_hyper({**self.defaults, **{k: v for k, v in group.items() if k != "params"}})
            for name, p in group["params"].items():
                if not isinstance(name, str) or name in self.steps:
                    raise ValueError(f"params: names must be unique strings; {name!r} is not or comes twice")
                if getattr(getattr(p, "dtype", None), "kind", None) != "f":
                    raise ValueError(f"params: {name!r} must be a floating-point array")
                if id(p) in ids:
                    raise ValueError(f"params: {name!r} is an array already given under another name (twice)")
                ids.add(id(p))
                self.steps[name], self.state[name] = 0, {}
            self.param_groups.append({"params": dict(group["params"]), **hyper})
        if not self.steps:
            raise ValueError("params: the optimizer got an empty parameter list")
        self._flat = {}  # id(group) -> {"span": _flat_span of its params or None, "state": {buffer: (flat, views)}}

    def _check_hyper(self, h):  # pragma: no cover - abstract
        raise NotImplementedError

    def _needed(self, h):
        return self._buffers

    def _update(self, p, g, st, step, h):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def lr(self):
        """The learning rate shared by all groups (ValueError if the groups differ); setting it sets every group's."""
        lrs = {g["lr"] for g in self.param_groups}
        if len(lrs) != 1:
            raise ValueError(f"the param groups have different lr {sorted(lrs)}; read opt.param_groups[i]['lr']")
        return lrs.pop()

    @lr.setter
    def lr(self, value):
        value = _number("lr", value)
        for g in self.param_groups:
            g["lr"] = value

    def step(self, grads):
        """Update every parameter that has a gradient in ``grads`` (a dict name -> array or None), in place.

        All gradients are checked (known name, same shape, same backend) before any parameter changes.
        A gradient of another float dtype is cast to the parameter's dtype.
        """
        if not isinstance(grads, Mapping):
            raise ValueError(f"grads must be a dict name -> array, got {type(grads).__name__}")
        unknown = sorted(set(grads) - set(self.steps))
        if unknown:
            raise ValueError(f"grads has {len(unknown)} name(s) that are not parameters: {unknown[:5]}")
        work = []
        for h in self.param_groups:
            for name, p in h["params"].items():
                g = grads.get(name)
                if g is None:
                    continue
                if tuple(getattr(g, "shape", (None,))) != tuple(p.shape) or get_xp(g) is not get_xp(p):
                    raise ValueError(f"grads[{name!r}]: expected an array of shape {tuple(p.shape)} on the "
                                     f"parameter's backend, got {type(g).__name__} {getattr(g, 'shape', '')}")
                work.append((h, name, p, g.astype(p.dtype, copy=False)))
        flat = {id(h) for h in self.param_groups if self._step_flat(h, grads)}  # whole groups in one pass
        for h, name, p, g in work:
            if id(h) in flat:
                continue
            self.steps[name] += 1
            self._update(p, g, self.state[name], self.steps[name], h)

    def _step_flat(self, h, grads):
        """Update all of group ``h`` with one ``_update_flat`` over flat buffers, if its layout allows (module
        docstring): the params tile one stretch of a buffer, the grads are all given and tile another stretch
        the same way, every param has the same step count, and each state buffer exists for all or none of
        them. Returns whether it did; otherwise ``step`` takes the per-parameter loop."""
        flat = self._flat.get(id(h))
        if flat is None:  # the params never move, so their layout is worked out once
            flat = self._flat[id(h)] = {"span": flat_span(list(h["params"].values())), "state": {}}
        if flat["span"] is None:
            return False
        p_span, offsets = flat["span"]
        names, params = list(h["params"]), list(h["params"].values())
        gs = [grads.get(n) for n in names]
        if any(g is None for g in gs) or len({self.steps[n] for n in names}) != 1:
            return False
        g_span = flat_span(gs)
        if g_span is None or g_span[1] != offsets or g_span[0].dtype != p_span.dtype:
            return False
        st = {}
        for key in self._buffers:
            have = [key in self.state[n] for n in names]
            if all(have):
                buf, views = flat["state"].get(key, (None, ()))
                if buf is None or not all(self.state[n][key] is v for n, v in zip(names, views)):  # new or loaded
                    buf = get_xp(p_span).empty_like(p_span)
                    for n, p, o in zip(names, params, offsets):
                        buf[o:o + p.size] = self.state[n][key].reshape(-1)
                st[key] = buf
            elif any(have):
                return False
        step = self.steps[names[0]] + 1
        self._update_flat(p_span, g_span[0], st, step, h)
        for key, buf in st.items():  # the per-parameter state arrays are views of the flat buffers
            if flat["state"].get(key, (None,))[0] is not buf:
                views = [buf[o:o + p.size].reshape(p.shape) for p, o in zip(params, offsets)]
                for n, v in zip(names, views):
                    self.state[n][key] = v
                flat["state"][key] = (buf, views)
        for n in names:
            self.steps[n] = step
        return True

    def _update_flat(self, p, g, st, step, h):
        """``_update`` over a whole group's flat buffers; subclasses with a fused CUDA kernel override it.

        On NumPy the buffers are cut into cache-sized pieces updated on every CPU thread
        (``threads.parallel_chunks``): the update is elementwise, so the numbers are the same as in one piece."""
        if get_xp(p) is not np:
            return self._update(p, g, st, step, h)
        def piece(r):  # the update on one piece, with views of the state buffers (returned: new state joins)
            sub = {k: b[r] for k, b in st.items()}
            self._update(p[r], g[r], sub, step, h)
            return sub

        subs = parallel_chunks(piece, p.size, p.size)
        for key in subs[0].keys() - st.keys():  # state the update created (a first step): the pieces joined
            st[key] = np.concatenate([sub[key] for sub in subs])

    def state_dict(self):
        """A copy of the optimizer's state; layout in the module docstring."""
        groups = [{k: list(v) if isinstance(v, (tuple, dict)) else v for k, v in h.items()} for h in self.param_groups]
        state = {f"{buf}.{name}": a.copy() for name, st in self.state.items() for buf, a in st.items()}
        return {"optimizer": type(self).__name__, "param_groups": groups, "step": dict(self.steps), "state": state}

    def load_state_dict(self, sd):
        """Replace hyper-parameters, step counts and buffers with those of ``sd`` (copied, cast to the params'
        dtype and backend). Names, shapes and consistency are checked first; on ValueError nothing changes."""
        keys = {"optimizer", "param_groups", "step", "state"}
        if not isinstance(sd, Mapping) or set(sd) != keys or not isinstance(sd["state"], Mapping):
            raise ValueError(f"state dict must be a dict with exactly the keys {sorted(keys)}, 'state' a dict")
        if sd["optimizer"] != type(self).__name__:
            raise ValueError(f"state dict is for {sd['optimizer']!r}, this optimizer is {type(self).__name__!r}")
        if len(sd["param_groups"]) != len(self.param_groups):
            raise ValueError(f"state dict has {len(sd['param_groups'])} param groups, the optimizer has "
                             f"{len(self.param_groups)}")
        hypers = []
        for i, (saved, mine) in enumerate(zip(sd["param_groups"], self.param_groups)):
            if not isinstance(saved, Mapping) or "params" not in saved:
                raise ValueError(f"param group {i} of the state dict must be a dict with a 'params' list of names")
            missing, extra = set(mine["params"]) - set(saved["params"]), set(saved["params"]) - set(mine["params"])
            if missing or extra:
                raise ValueError(f"param group {i}: state dict names differ: missing {sorted(missing)[:5]}, "
                                 f"unexpected {sorted(extra)[:5]}")
            if set(saved) - set(mine):
                raise ValueError(f"param group {i}: unknown option(s) {sorted(set(saved) - set(mine))}")
            hypers.append(self._check_hyper({**mine, **saved}))
        steps = dict(sd["step"])
        if set(steps) != set(self.steps) or not all(isinstance(s, (int, np.integer)) and s >= 0
                                                    for s in steps.values()):
            raise ValueError("state dict 'step' must map every parameter name (and no other) to an int >= 0")
        params = {name: p for h in self.param_groups for name, p in h["params"].items()}
        state = {name: {} for name in params}
        for key, a in sd["state"].items():
            buf, _, name = key.partition(".")
            if buf not in self._buffers or name not in params:
                raise ValueError(f"state dict entry {key!r} is not '<buffer>.<parameter>' with a buffer in "
                                 f"{list(self._buffers)} and a known parameter")
            p = params[name]
            if tuple(getattr(a, "shape", (None,))) != tuple(p.shape):
                raise ValueError(f"state dict entry {key!r} has shape {getattr(a, 'shape', None)}, "
                                 f"parameter {name!r} has {tuple(p.shape)}")
            xp = get_xp(p)
            state[name][buf] = xp.array(to_numpy(a) if xp is np else a, dtype=p.dtype)
        for h, mine in zip(hypers, self.param_groups):
            for name in mine["params"]:
                lost = set(self._needed(h)) - set(state[name]) if steps[name] else set()
                if lost:
                    raise ValueError(f"state dict lacks {sorted(lost)} for {name!r}, which has taken steps")
        for h, mine in zip(hypers, self.param_groups):
            mine.update(h)
        self.state, self.steps = state, {k: int(v) for k, v in steps.items()}

    def __repr__(self):
        hyper = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return f"{type(self).__name__}({len(self.steps)} params, {len(self.param_groups)} group(s), {hyper})"


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
