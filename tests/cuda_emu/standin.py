"""A stand-in for CuPy that takes scratchllm's CuPy branches: arrays of a NumPy subclass whose module is "cupy"
(so ``backend.get_xp`` sees CuPy arrays, the registry sends them to the CUDA implementations and the CPU ones
refuse them), the CUDA kernels run on the host emulator (``emulator.py``), and CuPy's rules where NumPy's are
laxer:

- a NumPy array (1-d or more) given to a device operation raises TypeError, as CuPy's "Unsupported type
  <class 'numpy.ndarray'>" (a host array that reached the device path unconverted): in an elementwise
  operation, a NumPy function called on a device array, or a ``cupy.`` function (all but ``asarray``/``array``,
  which copy host data to the device);
- a reduction over everything gives a 0-d device array, not a NumPy scalar (so ``float()`` is where the host
  reads a value back, as on a GPU);
- ``.get()`` and ``cupy.asnumpy`` copy to the host; ``cupy.asarray`` copies to the "device".

Not emulated: NumPy's ``np.asarray(device_array)`` goes through here (CuPy refuses it), memory is the host's,
streams run synchronously. ``install(monkeypatch)`` puts it in ``sys.modules["cupy"]`` with the cached backend
and kernel lookups emptied; ``calls`` counts the matrix products and kernel launches.
"""

from __future__ import annotations

import collections
import functools
import sys
import types

import numpy as np

from . import emulator

calls = collections.Counter()  # "matmul", and each RawKernel / ElementwiseKernel name: how often it ran


class ndarray(np.ndarray):
    """A device array: NumPy's, with CuPy's refusals."""

    @property
    def data(self):  # CuPy's MemoryPointer: the device address as .ptr
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def get(self, stream=None, order="C", out=None):
        return np.array(self.view(np.ndarray), order=order)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _refuse_host_arrays(inputs + (out or ()), ufunc.__name__)
        if ufunc is np.matmul:
            calls["matmul"] += 1
        plain = [x.view(np.ndarray) if isinstance(x, ndarray) else x for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(x.view(np.ndarray) if isinstance(x, ndarray) else x for x in out)
        result = getattr(ufunc, method)(*plain, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _device(result)

    def __getitem__(self, key):
        return _device(super().__getitem__(_plain(key)))  # an element is a 0-d array, as CuPy's

    def __array_function__(self, func, types_, args, kwargs):
        _refuse_host_arrays((args, kwargs), func.__name__)
        return _device(super().__array_function__(func, tuple(t for t in types_ if t is not ndarray) or
                                                  (np.ndarray,), _plain(args), _plain(kwargs)))


ndarray.__module__ = "cupy"  # what backend._is_cupy_array looks at


def _refuse_host_arrays(values, what):
    """TypeError for a NumPy array (1-d or more) anywhere in ``values`` (lists, tuples and dicts looked into)."""
    for x in values:
        if type(x) is np.ndarray and x.ndim > 0:
            raise TypeError(f"Unsupported type {type(x)} (a NumPy array given to a CuPy operation: {what})")
        if isinstance(x, (list, tuple)):
            _refuse_host_arrays(x, what)
        elif isinstance(x, dict):
            _refuse_host_arrays(x.values(), what)


def _plain(x):
    if isinstance(x, ndarray):
        return x.view(np.ndarray)
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def _device(r):
    """NumPy results as device arrays, scalars as 0-d arrays (CuPy's). A fresh result is copied into an array
    that owns its memory, so that every view's ``.base`` chain ends at a device array, as in CuPy."""
    if isinstance(r, np.generic):
        r = np.asarray(r)
    if isinstance(r, np.ndarray):
        if isinstance(r, ndarray):
            return r
        if r.base is not None:  # a view: of a device array (its root), or of host memory
            return r.view(ndarray)
        owner = ndarray(r.shape, r.dtype)
        owner.view(np.ndarray)[...] = r
        return owner
    if isinstance(r, tuple):
        return tuple(_device(v) for v in r)
    if isinstance(r, list):
        return [_device(v) for v in r]
    return r


def _wrap(fn):
    @functools.wraps(fn)
    def device_fn(*args, **kwargs):
        _refuse_host_arrays((args, kwargs), getattr(fn, "__name__", "?"))
        return _device(fn(*_plain(args), **_plain(kwargs)))
    return device_fn


class _CountingKernel:
    def __init__(self, kernel, name):
        self.kernel, self.name = kernel, name

    def __call__(self, *args, **kwargs):
        calls[self.name] += 1
        return _device(self.kernel(*args, **kwargs))


class RawModule(emulator.RawModule):
    def get_function(self, expr):
        return _CountingKernel(super().get_function(expr), expr)


class ElementwiseKernel(emulator.ElementwiseKernel):
    def __call__(self, *args):
        calls[self.name] += 1
        return _device(super().__call__(*args))


def module():
    """The stand-in ``cupy`` module."""
    mod = types.ModuleType("cupy")
    mod.__version__, mod.__file__ = "0.0-standin", __file__
    mod.ndarray = ndarray
    mod.RawModule, mod.ElementwiseKernel = RawModule, ElementwiseKernel
    mod.asnumpy = lambda a, stream=None: a.get() if isinstance(a, ndarray) else np.asarray(a)
    mod.asarray = lambda a, dtype=None, order=None: _device(np.array(_plain(a), dtype=dtype, order=order or "K"))
    mod.array = lambda a, dtype=None, copy=True, order="K", ndmin=0: _device(
        np.array(_plain(a), dtype=dtype, order=order, ndmin=ndmin))
    device = types.SimpleNamespace(id=0, compute_capability="90", synchronize=lambda: None,
                                   attributes={"MultiProcessorCount": emulator.SM_COUNT})
    stream = types.SimpleNamespace(synchronize=lambda: None)
    pool = types.SimpleNamespace(free_all_blocks=lambda: None, used_bytes=lambda: 0, total_bytes=lambda: 0)
    runtime = types.SimpleNamespace(
        getDeviceProperties=lambda i: {"name": b"host emulator", "multiProcessorCount": emulator.SM_COUNT},
        memGetInfo=lambda: (2**33, 2**34), runtimeGetVersion=lambda: 0, driverGetVersion=lambda: 0)
    mod.cuda = types.SimpleNamespace(is_available=lambda: True, Device=lambda *_: device, runtime=runtime,
                                     get_current_stream=lambda: stream)
    mod.get_default_memory_pool = lambda: pool

    mod.__getattr__ = _namespace_getattr(np)
    mod.linalg = _Namespace(np.linalg)
    return mod


def _namespace_getattr(source):
    def __getattr__(name):
        value = getattr(source, name)
        if isinstance(value, types.ModuleType):
            return _Namespace(value)
        return _wrap(value) if callable(value) and not isinstance(value, type) else value
    return __getattr__


class _Namespace:
    """A NumPy submodule (linalg) whose functions give device arrays."""

    def __init__(self, source):
        self._getattr = _namespace_getattr(source)

    def __getattr__(self, name):
        return self._getattr(name)


def cupyx_module():
    """The stand-in ``cupyx``: ``scatter_add`` (accumulating) and ``scipy.special.erf`` (NumPy's path of
    ``backend.erf``: SciPy's where installed, else the standard library's)."""
    from scratchllm.backend import erf

    mod = types.ModuleType("cupyx")

    def scatter_add(target, indices, values):
        np.add.at(target.view(np.ndarray), _plain(indices), _plain(values))
    mod.scatter_add = scatter_add
    mod.scipy = types.SimpleNamespace(special=types.SimpleNamespace(erf=_wrap(erf)))
    return mod


def install(monkeypatch):
    """The stand-in as ``cupy`` for this test, with the caches that remember what CuPy was emptied."""
    from scratchllm import backend
    from scratchllm.kernels.cuda import _common, gelu, optim

    caches = (backend.cupy_status, _common.raw_module, _common.kernel, _common.sm_count, gelu._ek, optim._ek)
    for c in caches:
        c.cache_clear()
    monkeypatch.setitem(sys.modules, "cupy", module())
    monkeypatch.setitem(sys.modules, "cupyx", cupyx_module())
    monkeypatch.setitem(sys.modules, "cupyx.scipy", sys.modules["cupyx"].scipy)
    monkeypatch.setitem(sys.modules, "cupyx.scipy.special", sys.modules["cupyx"].scipy.special)
    calls.clear()
    return caches
