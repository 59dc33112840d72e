"""Every registered implementation (scratchllm/kernels/registry.py) equals its textbook op: forward and backward,
float32 and float64, below and above the sizes where work is cut into pieces or run on every core, contiguous
and strided inputs, and with caches interchangeable both ways. A new implementation is covered by registering
it; a new op by its OPS entry (tests/ops)."""

import functools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scratchllm import kernels, ops
from scratchllm.kernels import dispatch, registry
from scratchllm.ops import OPS

# normwise: |got - want| <= TOL * max|want| (float32 sums over 512 rows differ by their order, not by a bug)
TOL = {np.float32: 2e-5, np.float64: 1e-12}
# about 266 K elements: above threads.PARALLEL_MIN and kernels.cpu.PRANGE_MIN
LARGE = dict(N=512, C=520, B=4, T=128, V=520, H=4, D=32, Cin=256, Cout=260)


def cases():
    """(registry entry, implementation) for every OPS entry whose textbook op has implementations."""
    for name, op in OPS.items():
        for impl in kernels.implementations(op.family).values():
            yield pytest.param(name, impl.name, id=f"{name}-{impl.name}")


def bind(fn, entry_forward):
    """``fn`` with the options the registry entry binds (gelu_erf: approximate="none"; attention_blocked: its
    block size)."""
    if isinstance(entry_forward, functools.partial):
        return functools.partial(fn, *entry_forward.args, **entry_forward.keywords)
    if hasattr(entry_forward, "rebind"):
        return entry_forward.rebind(fn)
    return fn


def strided(a):
    """The same values in a non-contiguous array (every other element of a buffer twice as long)."""
    if not (isinstance(a, np.ndarray) and a.dtype.kind == "f"):
        return a
    buffer = np.zeros(a.shape + (2,), a.dtype)
    view = buffer[..., 0]
    view[...] = a
    return view


def leaves(cache):
    if isinstance(cache, (tuple, list)):
        return [leaf for item in cache for leaf in leaves(item)]
    return [cache]


def assert_close(got, want, dtype, what):
    assert len(got) == len(want), f"{what}: {len(got)} values where the textbook gives {len(want)}"
    for i, (a, b) in enumerate(zip(got, want)):
        if isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, (what, i)
            scale = float(np.abs(b).max()) if b.size else 0.0
            np.testing.assert_allclose(a, b, rtol=0, atol=TOL[dtype] * scale, err_msg=f"{what} [{i}]")
        else:
            assert a == b or (a is None and b is None), (what, i)


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("size", ["registry", "large"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, impl_name", list(cases()))
def test_implementation_equals_the_textbook(name, impl_name, dtype, size, layout):
    op = OPS[name]
    impl = kernels.implementations(op.family)[impl_name]
    sizes = {k: v for k, v in LARGE.items() if k in op.default_sizes} if size == "large" else None
    inputs = op.make_inputs(sizes, dtype=np.dtype(dtype).name, seed=5)
    if layout == "strided":
        inputs = tuple(strided(a) for a in inputs)
    out_ref, cache_ref = op.forward(*inputs)
    dout = np.random.default_rng(6).standard_normal(np.shape(out_ref)).astype(dtype)
    grads_ref = op.backward(dout, cache_ref)
    runs_forward = impl.supports(*inputs, **getattr(op.forward, "keywords", {}))
    runs_backward = impl.supports_backward(dout, cache_ref)  # an implementation may do one direction only
    if not (runs_forward or runs_backward):
        missing = {"numba": not kernels.cpu_enabled(), "cuda": not kernels.enabled()}.get(impl.needs, False)
        pytest.skip(f"{impl_name}'s supports rules decline these inputs"
                    + (f" ({impl.needs} is not usable here)" if missing else " (by design: sizes, layout or dtype)"))
    if runs_forward:
        out, cache = bind(impl.forward, op.forward)(*inputs)
        assert_close([out], [out_ref], dtype, "out")
        assert_close(leaves(cache), leaves(cache_ref), dtype, "cache")  # the same layout, the same values
        assert_close(op.backward(dout, cache), grads_ref, dtype, "textbook backward of its cache")
        if impl.supports_backward(dout, cache):
            kept = [a.copy() if isinstance(a, np.ndarray) else a for a in leaves(cache)]
            assert_close(impl.backward(dout, cache), grads_ref, dtype, "grads")
            assert_close(leaves(cache), kept, dtype, "its cache after its backward")  # not used as scratch
    if runs_backward:
        kept = [a.copy() if isinstance(a, np.ndarray) else a for a in leaves(cache_ref)]
        assert_close(impl.backward(dout, cache_ref), grads_ref, dtype, "its backward of the textbook cache")
        assert_close(leaves(cache_ref), kept, dtype, "the textbook cache after its backward")
        other = np.float64 if dtype == np.float32 else np.float32  # dout in the other dtype: grads keep x's
        if impl.supports_backward(dout.astype(other), cache_ref):
            for g, a in zip(impl.backward(dout.astype(other), cache_ref), grads_ref):
                assert g is None if a is None else g.dtype == a.dtype, "grads must keep the inputs' dtype"
    for a, a_before in zip(inputs, op.make_inputs(sizes, dtype=np.dtype(dtype).name, seed=5)):
        np.testing.assert_array_equal(a, a_before)  # inputs not mutated


@given(data=st.data())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, impl_name", list(cases()))
def test_implementation_equals_the_textbook_on_drawn_values(name, impl_name, dtype, data):
    """The same comparison on values hypothesis draws (repeats, exact zeros, constant rows, +-30), at the
    registry's shapes; the tolerance is relative to max(scale, 1), since a constant row makes some results
    round-off around zero. Float32 gets values in +-8 and 1e-2: a constant layernorm row's mean, rounded
    differently by the textbook's mean and the kernels' sums (an ulp of x), is amplified by rstd = 1/sqrt(eps)
    (316) and w into outputs up to 2.4e-3 where the textbook has 0 (hypothesis found it). A NaN, an inf or a
    wrong value at zero fails either way."""
    op = OPS[name]
    impl = kernels.implementations(op.family)[impl_name]
    base = op.make_inputs(dtype=np.dtype(dtype).name, seed=0)
    values = (st.floats(-8, 8, allow_subnormal=False, width=32) if dtype == np.float32
              else st.floats(-30, 30, allow_subnormal=False))
    inputs = tuple(data.draw(hnp.arrays(dtype, a.shape, elements=values), label=f"input {i}")
                   if a.dtype.kind == "f" else a for i, a in enumerate(base))
    out_ref, cache_ref = op.forward(*inputs)
    dout = data.draw(hnp.arrays(dtype, np.shape(out_ref), elements=st.floats(-3, 3, width=32)), label="dout")
    grads_ref = op.backward(dout, cache_ref)
    tol = 1e-2 if dtype == np.float32 else 1e-10
    pairs = []
    if impl.supports(*inputs, **getattr(op.forward, "keywords", {})):
        out, cache = bind(impl.forward, op.forward)(*inputs)
        pairs += [(out, out_ref)]
        if impl.supports_backward(dout, cache):
            pairs += list(zip(impl.backward(dout, cache), grads_ref))
    if impl.supports_backward(dout, cache_ref):
        pairs += list(zip(impl.backward(dout, cache_ref), grads_ref))
    for got, want in pairs:
        if want is None:
            assert got is None
            continue
        scale = max(float(np.abs(want).max()) if want.size else 0.0, 1.0)
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale)


def test_select_names_what_runs_and_the_switch_turns_everything_off(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "1")
    x = np.ones((4, 8), np.float64)
    w = np.ones(8)
    want = next(iter(name for name, impl in kernels.implementations("layernorm").items() if impl.supports(x, w, w)))
    assert kernels.select("layernorm", x, w, w) == want
    assert kernels.select("no_such_op", x) == kernels.REFERENCE
    monkeypatch.setenv(kernels.ENV_VAR, "0")
    assert kernels.select("layernorm", x, w, w) == kernels.REFERENCE
    calls = []
    monkeypatch.setattr(ops, "layernorm_forward", lambda *a: calls.append(a) or ("out", "cache"))
    assert dispatch.layernorm_forward(x, w, w) == ("out", "cache") and len(calls) == 1


def test_the_dispatch_runs_the_selected_implementation(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "1")
    x = np.random.default_rng(0).standard_normal((4, 8))
    name = kernels.select("gelu", x)
    assert name != kernels.REFERENCE  # numpy, or numba with the fast extra
    impl = kernels.implementations("gelu")[name]
    module = __import__(impl.module, fromlist=["gelu_forward"])
    monkeypatch.setattr(module, "gelu_forward", lambda x, approximate="tanh": ("ran", approximate))
    assert dispatch.gelu_forward(x, approximate="none") == ("ran", "none")


def test_the_dispatch_checks_inputs_as_the_textbook_does():
    with pytest.raises(ValueError, match="w and b must have shape"):
        dispatch.layernorm_forward(np.ones((2, 3)), np.ones(4), np.ones(3))
    with pytest.raises(ValueError, match="approximate must be"):
        dispatch.gelu_forward(np.ones(3), approximate="erf")
    with pytest.raises(ValueError, match="dout must have the forward output's shape"):
        dispatch.gelu_backward(np.ones(2), dispatch.gelu_forward(np.ones(3))[1])


def test_every_implementation_runs_in_some_case_here():
    """An implementation whose rules decline every case above is proven by nothing (a size gate above the large
    case, say): each must run in one, unless it needs a GPU or Numba this machine lacks."""
    here = {"cuda": kernels.enabled(), "numba": kernels.cpu_enabled(), "": True}
    for impl in registry.IMPLEMENTATIONS:
        if not here[impl.needs]:
            continue
        ran = False
        for op in (op for op in OPS.values() if op.family == impl.op):
            for dtype in ("float32", "float64"):
                for sizes in (None, {k: v for k, v in LARGE.items() if k in op.default_sizes}):
                    inputs = op.make_inputs(sizes, dtype=dtype, seed=5)
                    out, cache = op.forward(*inputs)
                    ran = ran or impl.supports(*inputs, **getattr(op.forward, "keywords", {})) \
                        or impl.supports_backward(np.full(np.shape(out), 0.5, out.dtype), cache)
        assert ran, f"{impl.op}/{impl.name} runs in no case of test_implementation_equals_the_textbook: add one"


def test_every_implementation_is_listed_once_and_loads():
    seen = set()
    for impl in registry.IMPLEMENTATIONS:
        assert (impl.op, impl.name) not in seen
        seen.add((impl.op, impl.name))
        assert impl.op in {op.family for op in OPS.values()}
        assert impl.doc
    assert len(seen) >= 6


def test_batch_shards_in_threads_load_the_implementations_together():
    """In a fresh interpreter the shards' threads ask the dispatch for the same kernel modules at once: each must
    get the module after its import has finished (sys.modules holds it half-run meanwhile: AttributeError)."""
    import subprocess
    import sys

    code = ("import numpy as np\n"
            "from scratchllm.model import GPT, GPTConfig\n"
            "m = GPT(GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32), backend='numpy')\n"
            "from scratchllm.parallel import DataParallel\n"
            "dp = DataParallel(m, workers=4)\n"
            "idx = np.random.default_rng(0).integers(0, 65, (16, 32))\n"
            "_, loss, cache = dp.forward(idx, idx)\n"
            "assert len(cache['shards']) == 4\n"
            "dp.backward(cache)\n")
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
