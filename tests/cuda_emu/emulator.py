"""Our CUDA kernels run on the host: each kernel source compiled as C++ with ``shim.h`` and driven through the same
Python wrappers (``scratchllm/kernels/cuda/``), NumPy standing in for CuPy.

``fake_cupy()`` is a module to put in ``sys.modules["cupy"]``: NumPy's functions, plus

    RawModule(code, options, name_expressions)  compiles ``code`` with g++ (C++20) into a shared library with one
        launcher per name expression (``layernorm_forward<float>``); ``get_function(name)`` gives a kernel that
        is called as CuPy's: ``kernel(grid, block, args)``. Each argument is checked against the kernel's C++
        parameter as CUDA would read it (an array of the pointed-to type, a NumPy scalar of the parameter's
        exact size): a launch that would misread its arguments on a GPU fails here.
    ElementwiseKernel(in_params, out_params, body, name)  the body compiled inside a loop over the elements,
        inputs broadcast, outputs allocated (or written in place when given), as CuPy's.
    cuda.Device().attributes["MultiProcessorCount"]  a small number (4), so grids that depend on it vary.

The compiled libraries are cached by the hash of their source, the compiler and its flags under
``SCRATCHLLM_EMU_CACHE`` (default: a directory in the system's temp dir); ``SCRATCHLLM_EMU_CXXFLAGS`` adds flags
(``-fsanitize=address -fno-omit-frame-pointer``, with libasan preloaded into Python, reports an out-of-bounds
read with its line). A launch that deadlocks fails after ``SCRATCHLLM_EMU_TIMEOUT_S`` seconds (default 20).
``compiler()`` says which C++ compiler is used, or why none can be.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("SCRATCHLLM_EMU_CACHE", os.path.join(tempfile.gettempdir(), "scratchllm-cuda-emu"))
SM_COUNT = 4

# C++ parameter types -> what a NumPy argument must be
_SCALARS = {"int": np.int32, "unsigned": np.uint32, "long long": np.int64, "float": np.float32,
            "double": np.float64, "bool": np.bool_}
_EW_TYPES = {"int32": "int", "int64": "long long", "float32": "float", "float64": "double", "bool": "bool"}
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


@functools.lru_cache(maxsize=None)
def compiler():
    """``(path, None)`` of a C++20 compiler with <barrier>, or ``(None, why not)``."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        return None, "no C++ compiler (g++ or clang++) on PATH"
    probe = "#include <barrier>\nint main() { std::barrier<> b(1); b.arrive_and_wait(); }\n"
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "probe.cpp")
        with open(src, "w") as f:
            f.write(probe)
        done = subprocess.run([cxx, "-std=c++20", "-pthread", src, "-o", os.path.join(d, "probe")],
                              capture_output=True, text=True)
    if done.returncode != 0:
        return None, f"{cxx} cannot compile C++20 <barrier>: {done.stderr.strip().splitlines()[-1:]}"
    return cxx, None


def _build(source: str) -> ctypes.CDLL:
    cxx, why = compiler()
    if cxx is None:
        raise RuntimeError(why)
    with open(os.path.join(HERE, "shim.h")) as f:
        shim = f.read()
    flags = ["-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-w",
             *os.environ.get("SCRATCHLLM_EMU_CXXFLAGS", "").split()]
    key = hashlib.sha256("\0".join([shim, source, cxx, *flags]).encode()).hexdigest()[:20]
    os.makedirs(CACHE, exist_ok=True)
    lib = os.path.join(CACHE, f"emu_{key}.so")
    if not os.path.exists(lib):
        src = os.path.join(CACHE, f"emu_{key}.cpp")
        with open(src, "w") as f:
            f.write(source)
        tmp = f"{lib}.{os.getpid()}.tmp"
        done = subprocess.run([cxx, *flags, f"-I{HERE}", src, "-o", tmp], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the emulated kernel does not compile:\n{done.stderr[-3000:]}")
        os.replace(tmp, lib)  # atomic: a parallel test run never loads half a library
    return ctypes.CDLL(lib)


# ------------------------------------------------------------------------------------------- RawModule
def _split_params(params: str) -> list:
    """``[(c_type, is_pointer, name)]`` of a kernel's parameter list (T left as is)."""
    out = []
    for p in params.split(","):
        p = " ".join(p.replace("__restrict__", " ").split())
        pointer = "*" in p
        p = p.replace("*", " ").replace("const ", " ")
        *type_words, name = p.split()
        out.append((" ".join(type_words), pointer, name))
    return out


def kernel_signatures(code: str) -> dict:
    """``{kernel name: [(c_type, is_pointer, name)]}`` for every ``__global__`` function of ``code``."""
    found = re.findall(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)", code)
    return {name: _split_params(params) for name, params in found}


def _parse_expression(expr):
    """``"name<float>"`` -> ("name", "float"); a plain ``"name"`` (not a template) -> ("name", None)."""
    m = re.fullmatch(r"\s*(\w+)\s*(?:<\s*(\w+)\s*>)?\s*", expr)
    if not m:
        raise ValueError(f"name expression {expr!r}: expected 'kernel' or 'kernel<float>' / 'kernel<double>'")
    return m.group(1), m.group(2)


def _c_type(t, targ):
    return {"float": "float", "double": "double"}[targ] if t == "T" else t


def _launcher(name, targ, params, index):
    args = ", ".join(f"*({'const ' if not pointer else ''}{_c_type(t, targ)}{'*' if pointer else ''}*)args[{i}]"
                     for i, (t, pointer, _) in enumerate(params))
    call = f"{name}<{targ}>" if targ else name
    return (f'extern "C" int emu_launch_{index}(const unsigned* g, const unsigned* b, void** args, double timeout,\n'
            f"                                char* err, int errlen) {{\n"
            f"    return emu::launch(dim3(g[0], g[1], g[2]), dim3(b[0], b[1], b[2]), timeout, err, errlen,\n"
            f"                       [=] {{ {call}({args}); }});\n"
            f"}}\n")


class RawModule:
    """CuPy's RawModule on the host: ``code`` compiled with the shim, one launcher per name expression."""

    def __init__(self, code, options=(), name_expressions=()):
        self.signatures = kernel_signatures(code)
        self.names = list(name_expressions)
        parts = ['#include "shim.h"', code]
        for i, expr in enumerate(self.names):
            name, targ = _parse_expression(expr)
            if name not in self.signatures:
                raise ValueError(f"name expression {expr!r}: no __global__ function {name!r} in the code "
                                 f"(found: {', '.join(self.signatures) or 'none'})")
            parts.append(_launcher(name, targ, self.signatures[name], i))
        self.lib = _build("\n".join(parts))

    def get_function(self, expr):
        if expr not in self.names:
            raise ValueError(f"{expr!r} is not one of this module's name expressions {self.names}")
        name, targ = _parse_expression(expr)
        return RawKernel(self, expr, self.names.index(expr), self.signatures[name], targ)


class RawKernel:
    def __init__(self, module, expr, index, params, targ):
        self.expr, self.params, self.targ = expr, params, targ
        self.fn = getattr(module.lib, f"emu_launch_{index}")
        self.fn.restype = ctypes.c_int
        self.launches = 0

    def __call__(self, grid, block, args, shared_mem=0):
        if shared_mem:
            raise NotImplementedError(f"{self.expr}: dynamic shared memory (shared_mem={shared_mem}, extern "
                                      f"__shared__) is not emulated")
        if len(args) != len(self.params):
            raise TypeError(f"{self.expr}: {len(args)} arguments for {len(self.params)} parameters")
        keep, slots = [], (ctypes.c_void_p * len(args))()
        for i, (a, (t, pointer, pname)) in enumerate(zip(args, self.params)):
            want = np.dtype(_SCALARS[_c_type(t, self.targ) if t == "T" else t])
            if pointer:
                if not isinstance(a, np.ndarray) or a.dtype != want or not a.flags.c_contiguous:
                    raise TypeError(f"{self.expr}: argument {i} ({pname}) must be a C-contiguous {want} array; "
                                    f"got {type(a).__name__} {getattr(a, 'dtype', '')}")
                holder = ctypes.c_void_p(a.ctypes.data)
            else:
                if not isinstance(a, np.generic) or a.dtype != want:
                    raise TypeError(f"{self.expr}: argument {i} ({pname}) must be a NumPy {want} scalar (CUDA "
                                    f"reads {want.itemsize} bytes); got {type(a).__name__} {getattr(a, 'dtype', '')}")
                holder = ctypes.create_string_buffer(a.tobytes(), want.itemsize)
            keep.append(holder)
            slots[i] = ctypes.addressof(holder)
        dims = [(d,) if isinstance(d, (int, np.integer)) else tuple(d) for d in (grid, block)]
        g, b = ((ctypes.c_uint * 3)(*(tuple(map(int, d)) + (1,) * (3 - len(d)))) for d in dims)
        err = ctypes.create_string_buffer(2048)
        self.launches += 1
        timeout = float(os.environ.get("SCRATCHLLM_EMU_TIMEOUT_S", "20"))
        if self.fn(g, b, slots, ctypes.c_double(timeout), err, ctypes.c_int(len(err))) != 0:
            raise RuntimeError(f"{self.expr}: {err.value.decode()}")


# ----------------------------------------------------------------------------------- ElementwiseKernel
def _ew_params(spec):
    """``[(type, name)]`` of an ElementwiseKernel parameter list ("T x, int32 maximize")."""
    return [tuple(p.split()) for p in spec.split(",") if p.strip()]


class ElementwiseKernel:
    """CuPy's ElementwiseKernel on the host: the body inside a loop over the (broadcast) elements."""

    def __init__(self, in_params, out_params, operation, name="kernel"):
        self.ins, self.outs, self.name = _ew_params(in_params), _ew_params(out_params), name
        self.operation = operation
        self.libs = {}

    def _lib(self, ctype):
        if ctype not in self.libs:
            lines = []
            for i, (t, n) in enumerate(self.ins + self.outs):
                ref = "" if i < len(self.ins) else "&"
                c = "T" if t == "T" else _EW_TYPES[t]
                lines.append(f"    {'const ' if not ref else ''}{c}{ref} {n} = ((({c}*)emu_args[{i}])"
                             f"[emu_steps[{i}] ? emu_i : 0]);")
            code = (f'#include "shim.h"\nextern "C" void emu_elementwise(long long emu_n, void** emu_args, '
                    f"const int* emu_steps) {{\n  using T = {ctype};\n"
                    f"  for (long long emu_i = 0; emu_i < emu_n; ++emu_i) {{\n"
                    + "\n".join(lines) + f"\n    {{ {self.operation} }}\n  }}\n}}\n")
            self.libs[ctype] = _build(code)
        return self.libs[ctype]

    def __call__(self, *args):
        if len(args) not in (len(self.ins), len(self.ins) + len(self.outs)):
            raise TypeError(f"{self.name}: {len(args)} arguments")
        arrays = [a for a in args if isinstance(a, np.ndarray) and a.ndim > 0]
        T = next(np.asarray(a).dtype for a, (t, _) in zip(args, self.ins + self.outs) if t == "T")
        shape = np.broadcast_shapes(*(a.shape for a in arrays)) if arrays else ()
        given_outs = list(args[len(self.ins):])
        outs = given_outs or [np.empty(shape, dtype=T if t == "T" else np.dtype(t)) for t, _ in self.outs]
        buffers, steps = [], []
        for a, (t, n) in zip(list(args[:len(self.ins)]) + outs, self.ins + self.outs):
            want = T if t == "T" else np.dtype(t)
            a = a if isinstance(a, np.ndarray) else np.asarray(a)  # (a subclass stays the same object)
            if a.ndim == 0:
                buffers.append(np.array(a, dtype=want).reshape(1))
                steps.append(0)
                continue
            if any(a is o for o in outs):  # an output: written in place
                if a.dtype != want or not a.flags.c_contiguous or a.shape != shape:
                    raise TypeError(f"{self.name}: output {n} must be a C-contiguous {want} array of shape {shape}")
                buffers.append(a)
            else:
                buffers.append(np.ascontiguousarray(np.broadcast_to(a.astype(want, copy=False), shape)))
            steps.append(1)
        slots = (ctypes.c_void_p * len(buffers))(*[b.ctypes.data for b in buffers])
        self._lib(_CTYPES[np.dtype(T)]).emu_elementwise(ctypes.c_longlong(int(np.prod(shape))), slots,
                                                        (ctypes.c_int * len(steps))(*steps))
        return outs[0] if len(outs) == 1 else tuple(outs)


# ------------------------------------------------------------------------------------------ fake cupy
def fake_cupy():
    """A module to stand in for cupy while the wrappers run on NumPy arrays."""
    mod = types.ModuleType("cupy")
    mod.RawModule, mod.ElementwiseKernel = RawModule, ElementwiseKernel
    mod.ndarray = np.ndarray
    mod.asnumpy = np.asarray
    device = types.SimpleNamespace(attributes={"MultiProcessorCount": SM_COUNT}, id=0)
    mod.cuda = types.SimpleNamespace(Device=lambda *_: device)
    mod.__getattr__ = lambda name: getattr(np, name)
    return mod
