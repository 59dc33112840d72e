"""The fused CUDA kernels (scratchllm/kernels/).

Runs everywhere (no GPU, no CuPy):
  - importing the package does not import cupy, and ``enabled()`` is False with a reason;
  - every CUDA source, and every ElementwiseKernel body, compiles with nvcc for sm_80 and sm_90 (skipped
    when nvcc is absent);
  - every launch passes arguments that match its kernel's signature (count, pointer dtypes, scalar types),
    with NumPy standing in for CuPy.

On a GPU: test_kernels_gpu.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from scratchllm import kernels
from scratchllm.kernels.cuda import cross_entropy, flash_attention, gelu, layernorm, optim, softmax

RAW_MODULES = (layernorm, softmax, cross_entropy, flash_attention)  # RawModule sources (C++ templates)
ELEMENTWISE_MODULES = (gelu, optim)  # ElementwiseKernel bodies
ARCHS = ("sm_80", "sm_90")

# A kernel that keeps the GPU busy for a given time (globaltimer: nanoseconds): the no-sync test queues it
# before a training step, so a step that waits for the device takes at least that long on the host.
SPIN_SOURCE = r"""
extern "C" __global__ void scratchllm_spin(long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < (unsigned long long)ns);
}
"""


# ------------------------------------------------------------------------------------------ no GPU needed
def test_import_does_not_need_cupy():
    code = ("import sys; sys.modules['cupy'] = None\n"  # `import cupy` now raises ImportError
            "import scratchllm.kernels as k, scratchllm.ops, scratchllm.model, scratchllm.optim\n"
            "from scratchllm.kernels.cuda import layernorm, softmax, gelu, cross_entropy, optim\n"
            "ok, why = k.status()\n"
            "assert not ok and not k.enabled(), why\n"
            "assert 'cupy is not importable' in why, why\n"
            "assert all(len(m.CUDA_SOURCE) > 100 for m in (layernorm, softmax, cross_entropy))\n"
            "print(why)")
    env = {k: v for k, v in os.environ.items() if k != kernels.ENV_VAR}  # the switch would be the reason
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "no fused kernels" in done.stdout


def test_env_var_turns_them_off(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "0")
    assert kernels.status() == (False, "SCRATCHLLM_KERNELS=0 turns the fused kernels off")
    assert not kernels.enabled()


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kernels.nope  # noqa: B018


def _instantiate_all(names):
    """Taking each template instantiation's address makes nvcc compile it (as name_expressions do in NVRTC)."""
    return "\nvoid* scratchllm_instantiate[] = {\n" + ",\n".join(f"    (void*)&{n}" for n in names) + "\n};\n"


def _elementwise_as_device_functions(mod):
    """Each ElementwiseKernel body wrapped as a __device__ template function (inputs const, outputs by
    reference, as CuPy declares them), plus a __global__ caller per dtype to instantiate it."""
    ctype = {"T": "T", "int32": "int", "float32": "float", "float64": "double"}
    parts, names = [], []
    for name, (in_params, out_params, body) in mod.ELEMENTWISE.items():
        ins = [p.split() for p in in_params.split(",")]
        outs = [p.split() for p in out_params.split(",")]
        params = [f"const {ctype[t]} {n}" for t, n in ins] + [f"{ctype[t]}& {n}" for t, n in outs]
        args = ["a[0]" if t == "T" else "0" for t, _ in ins] + ["a[0]" for _ in outs]
        call = f"{name}_body<T>({', '.join(args)});"
        parts.append(f"template <typename T>\n__device__ void {name}_body({', '.join(params)}) {{{body}}}\n"
                     f"template <typename T>\n__global__ void {name}_check(T* a) {{ {call} }}")
        names += [f"{name}_check<{t}>" for t in ("float", "double")]
    return "\n".join(parts), names


def _sources():
    out = {m.__name__.rsplit(".", 1)[1]: m.CUDA_SOURCE + _instantiate_all(m.NAME_EXPRESSIONS) for m in RAW_MODULES}
    for m in ELEMENTWISE_MODULES:
        src, names = _elementwise_as_device_functions(m)
        out[m.__name__.rsplit(".", 1)[1] + "_elementwise"] = src + _instantiate_all(names)
    out["spin"] = SPIN_SOURCE
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_every_cuda_source_compiles_with_nvcc(arch, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")

    def compile_one(item):
        name, src = item
        cu = tmp_path / f"{name}.cu"
        cu.write_text(src)
        cmd = [nvcc, "-ptx", f"-arch={arch}", "-std=c++14", "-Werror", "all-warnings", str(cu),
               "-o", str(tmp_path / f"{name}.ptx")]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        return name, done.returncode, done.stderr

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(compile_one, _sources().items()))
    failed = [f"{name}:\n{err}" for name, rc, err in results if rc != 0]
    assert not failed, "\n".join(failed)
    for m in RAW_MODULES:  # every kernel, float and double, is in the PTX
        ptx = (tmp_path / f"{m.__name__.rsplit('.', 1)[1]}.ptx").read_text()
        assert ptx.count(".entry") == len(m.NAME_EXPRESSIONS)


# --- launch arguments against the kernel signatures, with NumPy standing in for CuPy -----------------------
def _signature(source, name):
    """The parameter types of ``__global__ void name(...)`` in ``source``: ("ptr", base) or ("val", type)."""
    match = re.search(r"__global__ void " + name + r"\((.*?)\)\s*\{", source, re.S)
    assert match, f"kernel {name} not found"
    params = []
    for p in match.group(1).split(","):
        words = p.replace("__restrict__", "").replace("const", "").split()
        if "*" in p:
            params.append(("ptr", " ".join(words[:-1]).replace("*", "").strip()))
        else:
            params.append(("val", " ".join(words[:-1])))
    return params


class FakeRawKernel:
    launches = []

    def __init__(self, source, name, dtype):
        self.name, self.dtype, self.params = name, np.dtype(dtype), _signature(source, name)

    def __call__(self, grid, block, args, shared_mem=0):
        T = {"T": self.dtype, "long long": np.dtype(np.int64), "int": np.dtype(np.int32), "bool": np.dtype(bool)}
        assert len(args) == len(self.params), f"{self.name}: {len(args)} args for {len(self.params)} params"
        for i, ((kind, typ), a) in enumerate(zip(self.params, args)):
            want = T[typ]
            if kind == "ptr":
                assert isinstance(a, np.ndarray) and a.dtype == want, f"{self.name} arg {i}: want {want}* got {a!r}"
                assert a.flags.c_contiguous, f"{self.name} arg {i} is not contiguous"
            else:
                assert isinstance(a, np.generic) and a.dtype == want, f"{self.name} arg {i}: want {want} got {a!r}"
        assert all(isinstance(g, int) and g >= 1 for g in grid), grid
        threads = int(np.prod(block))
        assert threads <= 1024 and threads % 32 == 0, block
        FakeRawKernel.launches.append(self.name)


class FakeElementwiseKernel:
    def __init__(self, in_params, out_params, body, name):
        self.name = name
        self.ins = [p.split()[0] for p in in_params.split(",")]
        self.outs = [p.split()[0] for p in out_params.split(",")]

    def __call__(self, *args):
        assert len(args) in (len(self.ins), len(self.ins) + len(self.outs)), f"{self.name}: {len(args)} args"
        T = next(a.dtype for a in args if isinstance(a, np.ndarray))
        for i, (typ, a) in enumerate(zip(self.ins + self.outs, args)):
            want = T if typ == "T" else np.dtype(typ)
            assert isinstance(a, (np.ndarray, np.generic)) and a.dtype == want, f"{self.name} arg {i}: {a!r}"
        shape = np.broadcast_shapes(*(a.shape for a in args if isinstance(a, np.ndarray)))
        if len(args) > len(self.ins):
            return None
        outs = tuple(np.zeros(shape, T) for _ in self.outs)
        return outs if len(outs) > 1 else outs[0]


@pytest.fixture
def numpy_as_cupy(monkeypatch):
    fake = types.SimpleNamespace(**{n: getattr(np, n) for n in (
        "ascontiguousarray", "moveaxis", "where", "maximum", "asarray", "int64", "float32", "float64")})
    fake.empty_like = np.zeros_like  # zeros: the fake kernels write nothing, and NaN garbage would warn
    fake.empty = np.zeros
    for mod in RAW_MODULES + ELEMENTWISE_MODULES:
        monkeypatch.setattr(mod, "cupy", lambda: fake)
    for mod in RAW_MODULES:
        monkeypatch.setattr(mod, "kernel", lambda source, names, name, dtype: FakeRawKernel(source, name, dtype))
    for mod in ELEMENTWISE_MODULES:
        monkeypatch.setattr(mod, "_ek", lambda name, mod=mod: FakeElementwiseKernel(*mod.ELEMENTWISE[name], name))
    monkeypatch.setattr(layernorm, "sm_count", lambda: 132)
    FakeRawKernel.launches = []
    return fake


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_launch_arguments_match_the_kernel_signatures(numpy_as_cupy, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7)).astype(dtype)
    w, b = np.ones(7, dtype), np.zeros(7, dtype)
    out, cache = layernorm.layernorm_forward(x, w, b)
    assert out.shape == x.shape and cache[0].shape == x.shape and cache[1].shape == (2, 3, 1)
    dx, dw, db = layernorm.layernorm_backward(np.ones_like(x), cache)
    assert dx.shape == x.shape and dw.shape == (7,) and db.shape == (7,)
    big = rng.standard_normal((5000, 7)).astype(dtype)  # several row chunks for dw, db
    layernorm.layernorm_backward(np.ones_like(big), layernorm.layernorm_forward(big, w, b)[1])

    for axis in (-1, 1):
        y, cache = softmax.softmax_forward(x, axis)
        assert y.shape == x.shape and cache[1] == axis
        assert softmax.softmax_backward(np.ones_like(x), cache)[0].shape == x.shape
    att = rng.standard_normal((2, 2, 3, 5)).astype(dtype)
    p, cache = softmax.scaled_causal_softmax_forward(att, 0.5)
    assert p.shape == att.shape and cache[1] == -1

    logits = rng.standard_normal((2, 3, 11)).astype(dtype)
    targets = np.array([[1, -1, 3], [10, 0, -1]], dtype=np.int32)  # int32 targets are widened to int64
    loss, cache = cross_entropy.cross_entropy_forward(logits, targets)
    assert loss.shape == () and len(cache) == 5
    dlogits, none = cross_entropy.cross_entropy_backward(1.0, cache)
    assert dlogits.shape == logits.shape and none is None

    for approximate in ("tanh", "none"):
        out, cache = gelu.gelu_forward(x, approximate)
        assert out.shape == x.shape and cache[2] == approximate
        assert gelu.gelu_backward(np.ones_like(x), cache)[0].shape == x.shape

    q, k, v = (rng.standard_normal((1, 2, n, 4)).astype(dtype) for n in (5, 7, 7))
    out, cache = flash_attention.flash_attention_forward(q, k, v)
    assert out.shape == q.shape and cache[4].shape == (1, 2, 5)
    grads = flash_attention.flash_attention_backward(rng.standard_normal(out.shape).astype(dtype), cache)
    assert [a.shape for a in grads] == [q.shape, k.shape, v.shape]

    p, g, m, v, vmax = (np.zeros(10, dtype) for _ in range(5))
    h = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, amsgrad=False, maximize=False)
    optim.adam_step(p, g, m, v, None, 1, h, decoupled=True)
    optim.adam_step(p, g, m, v, vmax, 3, {**h, "amsgrad": True}, decoupled=False)
    optim.adagrad_step(p, g, m, 2, dict(lr=1e-2, lr_decay=0.1, weight_decay=0.0, eps=1e-10, maximize=True))
    assert set(FakeRawKernel.launches) == {k for m in RAW_MODULES for k in m.KERNELS}


def test_the_cuda_attention_around_its_kernels_on_the_host(monkeypatch):
    """kernels/cuda/attention.py's Python (whole arrays, the query blocks, out=) with the two CUDA softmax kernels
    stood in by NumPy and NumPy for CuPy: the same numbers as the textbook, dropout masks drawn alike."""
    from scratchllm import ops
    from scratchllm.kernels.cuda import attention as cuda_attention
    from scratchllm.kernels.cuda import softmax as cuda_softmax
    from scratchllm.ops.attention import causal_mask

    def scaled_causal_softmax(att, scale, causal=True):
        att = att * scale
        if causal:
            att = np.where(causal_mask(*att.shape[-2:]), -np.inf, att)
        return ops.softmax_forward(att)

    monkeypatch.setattr(cuda_softmax, "scaled_causal_softmax_forward", scaled_causal_softmax)
    monkeypatch.setattr(cuda_softmax, "softmax_backward", ops.softmax_backward)
    monkeypatch.setattr(cuda_attention, "cupy", lambda: np)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 3, 7, 4))
    k, v = rng.standard_normal((2, 3, 9, 4)), rng.standard_normal((2, 3, 9, 4))
    dout = rng.standard_normal(q.shape)
    pairs = [((cuda_attention.attention_forward, cuda_attention.attention_backward),
              (ops.attention_forward, ops.attention_backward), kw) for kw in
             (dict(causal=True), dict(causal=False), dict(causal=True, dropout=0.3, rng=5))]
    pairs += [((cuda_attention.attention_blocked_forward, cuda_attention.attention_blocked_backward),
               (ops.attention_blocked_forward, ops.attention_blocked_backward), kw) for kw in
              (dict(block=3), dict(block=2, dropout=0.3, rng=5))]
    for (fwd, bwd), (ref_fwd, ref_bwd), kw in pairs:
        out, cache = fwd(q, k, v, **kw)
        ref, ref_cache = ref_fwd(q, k, v, **kw)
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)
        for g, r in zip(bwd(dout, cache), ref_bwd(dout, ref_cache)):
            np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-13)
    out, cache = cuda_attention.attention_blocked_forward(q, k, v, block=3)
    views = tuple(np.full(a.shape, 7.0) for a in (q, k, v))
    got = cuda_attention.attention_blocked_backward(dout, cache, out=views)
    assert all(g is w for g, w in zip(got, views))
    for g, r in zip(got, ops.attention_blocked_backward(dout, ops.attention_blocked_forward(q, k, v, block=3)[1])):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-13)
