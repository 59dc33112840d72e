"""The optimizers' shared machinery: ``Optimizer`` (parameter groups, checks, ``step``, state dicts) and its
flat fast path. The update rules are the subclasses in ``optim/__init__.py``.

Flat fast path: when a group's parameters exactly tile one stretch of a single contiguous buffer (see
``flatten_params``; GPT allocates its parameters so, weights >= 2-D first, so both ``decay_groups`` groups are
one stretch each) and the gradients are views of another buffer laid out alike (GPT.backward returns them
so), ``step`` updates the group with ONE update over the buffer instead of one per parameter: a single fused
kernel launch for Adam, AdamW and Adagrad on CuPy (``scratchllm/kernels/cuda/optim.py``); on NumPy one fused Numba
kernel (``scratchllm/kernels/cpu/optim.py``), or without Numba the same expressions over cache-sized
pieces of the buffer on every CPU thread. The state buffers are then flat too, each
parameter's state array a view of them, so ``state_dict`` and ``load_state_dict`` see no difference. Any other
layout takes the per-parameter loop; both give the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import kernels
from ..backend import get_xp, to_numpy
from ..kernels.flat import flat_span
from .utils import _number
from ..kernels.threads import parallel_chunks


def _fused_optim(p):
    """The module of fused update kernels for ``p``'s arrays, or None for the plain update: the CUDA
    kernels (``kernels/cuda/optim.py``) for CuPy, the Numba ones (``kernels/cpu/optim.py``) for NumPy."""
    if get_xp(p) is not np:
        return kernels if kernels.enabled() else None
    if not kernels.cpu_kernel_for(p):  # a float32 or float64 NumPy buffer (and Numba installed)
        return None
    from ..kernels.cpu import optim as cpu_optim

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
        self._flat = {}  # id(group) -> {"span": flat_span of its params or None, "state": {buffer: (flat, views)}}

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
