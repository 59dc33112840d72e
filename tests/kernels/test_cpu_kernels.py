"""The fused CPU kernels (scratchllm/kernels/cpu/, Numba) against their references, the NumPy ops.

Each op is run twice on the same inputs, once through the kernel (the default when Numba imports) and once
with ``SCRATCHLLM_KERNELS=0`` (the NumPy code): outputs, caches and gradients must agree, a kernel cache must
work with the NumPy backward and the other way round, and the float64 kernels must pass the finite-difference
gradcheck themselves. The NumPy reference keeps its own gradchecks in tests/ops.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("numba")

from scratchllm import kernels, ops  # noqa: E402
from scratchllm.kernels import dispatch  # noqa: E402
from scratchllm.kernels.cpu import _math  # noqa: E402
from tests.helpers import assert_gradcheck, normal, random_dout, seeds  # noqa: E402

TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def run(forward, backward, inputs, reference, monkeypatch, seed=7):
    """(out, cache, grads) of one op, through the kernels or (reference=True) the NumPy code."""
    monkeypatch.setenv(kernels.ENV_VAR, "0" if reference else "1")
    out, cache = forward(*inputs)
    grads = backward(random_dout(out, seed), cache)
    return out, cache, grads


def assert_same(a, b, dtype):
    for x, y in zip(a, b):
        if isinstance(x, np.ndarray):
            np.testing.assert_allclose(x, y, **TOL[dtype])


CASES = {  # name -> (forward, backward, input builder(seed, dtype))
    "layernorm": (dispatch.layernorm_forward, dispatch.layernorm_backward,
                  lambda s, d: (normal(s, (3, 5, 37), d, 2.0) + 1.5, normal(s + 1, (37,), d), normal(s + 2, (37,), d))),
    "softmax": (dispatch.softmax_forward, dispatch.softmax_backward, lambda s, d: (normal(s, (2, 7, 45), d, 3.0),)),
    "gelu": (dispatch.gelu_forward, dispatch.gelu_backward, lambda s, d: (normal(s, (6, 41), d, 3.0),)),
    "gelu_erf": (lambda x: dispatch.gelu_forward(x, approximate="none"), dispatch.gelu_backward,
                 lambda s, d: (normal(s, (6, 41), d, 3.0),)),
    "attention": (dispatch.attention_forward, dispatch.attention_backward,
                  lambda s, d: tuple(normal(s + i, (2, 3, 19, 4), d) for i in range(3))),
    "attention_noncausal": (lambda q, k, v: dispatch.attention_forward(q, k, v, causal=False), dispatch.attention_backward,
                       lambda s, d: tuple(normal(s + i, (2, 3, 19, 4), d) for i in range(3))),
    "attention_kv": (dispatch.attention_forward, dispatch.attention_backward,  # 7 queries, the last of 23 positions
                     lambda s, d: (normal(s, (2, 2, 7, 4), d), normal(s + 1, (2, 2, 23, 4), d),
                                   normal(s + 2, (2, 2, 23, 4), d))),
    "embedding": (dispatch.embedding_forward, dispatch.embedding_backward,  # 40 tokens of 9 ids: most ids repeat
                  lambda s, d: (np.random.default_rng(s).integers(0, 9, (4, 10)), normal(s, (9, 6), d))),
    "cross_entropy": (dispatch.cross_entropy_forward, dispatch.cross_entropy_backward,  # one ignored row
                      lambda s, d: (normal(s, (3, 5, 37), d, 3.0),
                                    np.where(np.arange(15).reshape(3, 5) == 4, -1,
                                             np.random.default_rng(s).integers(0, 37, (3, 5))))),
    "attention_blocked": (lambda q, k, v: dispatch.attention_blocked_forward(q, k, v, block=5),
                          dispatch.attention_blocked_backward,
                          lambda s, d: tuple(normal(s + i, (2, 3, 19, 4), d) for i in range(3))),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_equals_the_numpy_op(name, dtype, monkeypatch):
    forward, backward, build = CASES[name]
    inputs = build(3, dtype)
    out_k, cache_k, grads_k = run(forward, backward, inputs, False, monkeypatch)
    out_r, cache_r, grads_r = run(forward, backward, inputs, True, monkeypatch)
    assert out_k.dtype == dtype and all(g.dtype == dtype for g in grads_k if g is not None)
    np.testing.assert_allclose(out_k, out_r, **TOL[dtype])
    assert_same(grads_k, grads_r, dtype)
    flat_k, flat_r = flatten_cache(cache_k), flatten_cache(cache_r)  # the same layout, the same values
    assert [(type(a), np.shape(a)) for a in flat_k] == [(type(a), np.shape(a)) for a in flat_r]
    for a, b in zip(flat_k, flat_r):
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, **TOL[dtype])
        else:
            assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


def flatten_cache(cache):
    """A cache's leaves in order (tuples and lists opened)."""
    if isinstance(cache, (tuple, list)):
        return [leaf for item in cache for leaf in flatten_cache(item)]
    return [cache]


@pytest.mark.parametrize("name", ["layernorm", "softmax", "gelu", "gelu_erf", "attention"])
def test_caches_are_interchangeable(name, monkeypatch):
    """A kernel forward's cache works with the NumPy backward, and the other way round."""
    forward, backward, build = CASES[name]
    inputs = build(5, np.float64)
    dout = None
    for fwd_ref, bwd_ref in ((False, True), (True, False)):
        monkeypatch.setenv(kernels.ENV_VAR, "0" if fwd_ref else "1")
        out, cache = forward(*inputs)
        dout = random_dout(out) if dout is None else dout
        monkeypatch.setenv(kernels.ENV_VAR, "0" if bwd_ref else "1")
        mixed = backward(dout, cache)
        monkeypatch.setenv(kernels.ENV_VAR, "0")
        _, ref_cache = forward(*inputs)
        assert_same(mixed, backward(dout, ref_cache), np.float64)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_kernels_pass_the_gradcheck(name, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "1")
    forward, backward, build = CASES[name]
    assert_gradcheck(forward, backward, build(11, np.float64), mode="auto")


def test_the_ops_really_dispatch_to_the_kernels(monkeypatch):
    """With the kernels on, each op's work goes through them (a broken kernel shows), and off it does not."""
    from scratchllm.kernels.cpu import embedding, gelu, layernorm, softmax

    def broken(*args, **kw):
        raise RuntimeError("kernel called")

    x = normal(0, (4, 32))
    from scratchllm.kernels.cpu import optim
    from scratchllm.optim import AdamW

    flat = np.zeros(20)
    params, grads = {"p": flat[:10].reshape(2, 5)}, {"p": flat[10:].reshape(2, 5)}
    monkeypatch.setenv(kernels.ENV_VAR, "0")
    _, ln_cache = dispatch.layernorm_forward(x, x[0], x[1])
    _, sm_cache = dispatch.softmax_forward(x)
    _, ge_cache = dispatch.gelu_forward(x)
    _, ce_cache = dispatch.cross_entropy_forward(x, np.zeros(4, int))
    cases = [(layernorm, "layernorm_forward", lambda: dispatch.layernorm_forward(x, x[0], x[1])),
             (layernorm, "layernorm_backward", lambda: dispatch.layernorm_backward(x, ln_cache)),
             (softmax, "softmax_rows", lambda: dispatch.softmax_forward(x)),
             (softmax, "softmax_rows_backward", lambda: dispatch.softmax_backward(x, sm_cache)),
             (gelu, "gelu_forward", lambda: dispatch.gelu_forward(x)),
             (gelu, "gelu_backward", lambda: dispatch.gelu_backward(x, ge_cache)),
             (softmax, "logsumexp_rows", lambda: dispatch.cross_entropy_forward(x, np.zeros(4, int))),
             (softmax, "weighted_softmax_rows", lambda: dispatch.cross_entropy_backward(1.0, ce_cache)),
             (optim, "adam_step", lambda: AdamW(params).step(grads)),
             (softmax, "scaled_causal_softmax_rows", lambda: dispatch.attention_forward(*(x.reshape(1, 1, 4, 32),) * 3)),
             (embedding, "embedding_backward", lambda: dispatch.embedding_backward(x, dispatch.embedding_forward(
                 np.arange(4), x)[1]))]
    for module, name, call in cases:
        monkeypatch.setattr(module, name, broken)
        monkeypatch.setenv(kernels.ENV_VAR, "1")
        with pytest.raises(RuntimeError, match="kernel called"):
            call()
        monkeypatch.setenv(kernels.ENV_VAR, "0")
        call()  # the NumPy code
        monkeypatch.undo()


def test_status_names_the_switch(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "1")
    assert kernels.cpu_enabled() and "Numba" in kernels.cpu_status()[1]
    monkeypatch.setenv(kernels.ENV_VAR, "0")
    assert not kernels.cpu_enabled()
    assert kernels.cpu_status() == (False, f"{kernels.ENV_VAR}=0 turns the fused kernels off")


@given(seed=seeds, n=st.integers(1, 5), C=st.integers(1, 70), scale=st.sampled_from([0.5, 3.0, 30.0]),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_softmax_and_layernorm_rows_of_any_length(seed, n, C, scale, dtype):
    """Row lengths below, at and around the 16 lanes of the row max, against the NumPy code. (Layernorm from
    C = 2: a one-entry row is constant, its rstd = 1/sqrt(eps) = 316 amplifies float32 rounding 300x, and
    tests/ops/test_layernorm.py covers constant rows.)"""
    import os

    x = normal(seed, (n, C), dtype, scale)
    w, b = normal(seed + 1, (C,), dtype), normal(seed + 2, (C,), dtype)
    dout = normal(seed + 3, (n, C), dtype)
    results, before = [], os.environ.get(kernels.ENV_VAR)
    for switch in ("1", "0"):
        os.environ[kernels.ENV_VAR] = switch
        try:
            y, sc = ops.softmax_forward(x)
            results.append((y, *ops.softmax_backward(dout, sc)))
            if C > 1:
                o, lc = ops.layernorm_forward(x, w, b)
                results[-1] += (o, *ops.layernorm_backward(dout, lc))
        finally:  # as it was (hypothesis cannot use monkeypatch)
            if before is None:
                del os.environ[kernels.ENV_VAR]
            else:
                os.environ[kernels.ENV_VAR] = before
    assert_same(results[0], results[1], dtype)


def test_masked_entries_are_exact_zeros_and_nan_rows_stay_nan(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "1")
    x = normal(1, (3, 40), np.float32, 4.0)
    x[0, 17:] = -np.inf  # a masked tail
    x[1, 30] = np.nan
    y, _ = ops.softmax_forward(x)
    assert np.all(y[0, 17:] == 0) and y[0, :17].sum() == pytest.approx(1, abs=1e-6)
    assert np.isnan(y[1]).all() and np.isfinite(y[2]).all()
    q, k, v = (normal(i, (1, 2, 33, 4), np.float32) for i in range(3))
    _, cache = ops.attention_forward(q, k, v)
    p = cache[3][0]
    assert np.array_equal(p == 0, np.triu(np.ones((33, 33), bool), 1)[None, None].repeat(2, 1))
    # a NaN score a query sees: its row is NaN where it sees and exact zeros where it is masked, including
    # the masked entries the kernel's vector turns run over (40 keys: rows end mid-way through a turn)
    from scratchllm.kernels.cpu import softmax as fused

    att = normal(2, (1, 40, 40), np.float32, 3.0)
    att[0, 5, 2] = np.nan
    masked = np.triu(np.ones((40, 40), bool), 1)
    for in_place in (True, False):
        p = att.copy() if in_place else np.empty_like(att)
        fused.scaled_causal_softmax_rows(p if in_place else att, p, np.float32(0.5), True)
        assert np.all(p[0][masked] == 0) and np.isnan(p[0, 5, :6]).all()
        assert np.isfinite(p[0][~masked & (np.arange(40)[:, None] != 5)]).all()


def test_softmax_in_place_equals_out_of_place(monkeypatch):
    """The kernels work in place (attention's p, datt) and out of place alike."""
    from scratchllm.kernels.cpu import softmax

    monkeypatch.setenv(kernels.ENV_VAR, "1")
    x = normal(2, (9, 50), np.float32, 3.0)
    y = np.empty_like(x)
    softmax.softmax_rows(x, y, np.float32(0.7))
    z = x.copy()
    softmax.softmax_rows(z, z, np.float32(0.7))
    np.testing.assert_array_equal(y, z)
    dout = normal(3, x.shape, np.float32)
    dx = np.empty_like(x)
    softmax.softmax_rows_backward(dout, y, dx, np.float32(0.7))
    d2 = dout.copy()
    softmax.softmax_rows_backward(d2, y, d2, np.float32(0.7))
    np.testing.assert_array_equal(dx, d2)
    np.testing.assert_allclose(dx, 0.7 * y * (dout - (dout * y).sum(-1, keepdims=True)), rtol=1e-5, atol=1e-6)


def test_float32_math_accuracy():
    """The vectorized float32 exp, tanh and Phi against float64, over their whole working range."""
    from numba import njit

    @njit
    def apply(x, e, t, c):
        for i in range(x.size):
            e[i], t[i], c[i] = _math.exp(x[i]), _math.tanh(x[i]), _math.phi_cdf(x[i])

    x = np.linspace(-100, 88, 400_001).astype(np.float32)
    e, t, c = (np.empty_like(x) for _ in range(3))
    apply(x, e, t, c)
    x64 = x.astype(np.float64)
    live = x > _math.EXP_LO
    exact = np.exp(x64[live])
    assert np.max(np.abs(e[live] - exact) / exact) < 2.5e-7  # 2 ulp
    assert np.all(e[~live] == 0)
    assert np.max(np.abs(t - np.tanh(x64))) < 3e-7
    phi = 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x64[::50]]))
    assert np.max(np.abs(c[::50] - phi)) < 4e-7
    nan = np.array([np.nan], np.float32)
    apply(nan, e[:1], t[:1], c[:1])
    assert np.isnan(e[0]) and np.isnan(t[0])


@pytest.mark.parametrize("make", [
    lambda params: __import__("scratchllm.optim", fromlist=["AdamW"]).AdamW(params, lr=0.01, weight_decay=0.1),
    lambda params: __import__("scratchllm.optim", fromlist=["Adam"]).Adam(params, lr=0.01, weight_decay=0.1,
                                                                          amsgrad=True, maximize=True),
    lambda params: __import__("scratchllm.optim", fromlist=["Adagrad"]).Adagrad(params, lr=0.1, lr_decay=0.01,
                                                                                weight_decay=0.1),
    lambda params: __import__("scratchllm.optim", fromlist=["Adam"]).Adam(params, lr=0.01),
    lambda params: __import__("scratchllm.optim", fromlist=["AdamW"]).AdamW(params, lr=0.01, amsgrad=True),
    lambda params: __import__("scratchllm.optim", fromlist=["Adagrad"]).Adagrad(params, lr=0.1, maximize=True),
], ids=["adamw", "adam_amsgrad_maximize", "adagrad", "adam", "adamw_amsgrad", "adagrad_maximize"])
@pytest.mark.parametrize("on_every_core", [False, True])
def test_fused_optimizer_steps_are_bit_identical_to_numpy(make, on_every_core, monkeypatch):
    """The update kernels repeat the NumPy update's float32 operations in order: the same bits, also with
    Adam's pieces on every core through Numba's prange (pieces of 97 elements: a short last one)."""
    from scratchllm.kernels.flat import flatten_params
    from scratchllm.kernels import cpu
    from scratchllm.kernels.cpu import optim as fused_optim

    calls = []
    if on_every_core:
        if not cpu._tbb_layer():
            pytest.skip("Numba's TBB threading layer is not in use")
        monkeypatch.setattr(cpu, "PRANGE_MIN", 1)
        monkeypatch.setattr(cpu, "PRANGE_PIECE", 97)
        monkeypatch.setenv("SCRATCHLLM_THREADS", "2")
        real = fused_optim._adam_par
        monkeypatch.setattr(fused_optim, "_adam_par", lambda *a: calls.append(1) or real(*a))
    results = []
    for switch in ("1", "0"):
        monkeypatch.setenv(kernels.ENV_VAR, switch)
        _, params = flatten_params({"a": normal(0, (300, 7), np.float32), "b": normal(1, (5,), np.float32)})
        opt = make(params)
        for step in range(3):
            _, grads = flatten_params({n: normal(10 + step, p.shape, np.float32) for n, p in params.items()})
            opt.step(grads)
        results.append({n: p.copy() for n, p in params.items()} | {
            f"{n}.{k}": np.array(v) for n, st in opt.state.items() for k, v in st.items()})
    assert results[0].keys() == results[1].keys() and len(results[0]) > 2
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)
    if on_every_core and type(opt).__name__.startswith("Adam"):  # Adagrad keeps the Python threads
        assert calls, "Adam's prange driver never ran"


def test_embedding_kernel_refuses_ids_outside_the_table(monkeypatch):
    """The scatter kernel does not check its writes, so its wrapper checks the ids (a hand-made cache)."""
    monkeypatch.setenv(kernels.ENV_VAR, "1")
    dout = normal(0, (2, 3, 4))
    for bad in (-1, 5):
        ids = np.array([[0, 1, 2], [3, 4, bad]])
        with pytest.raises(ValueError, match=r"\[0, 5\)"):
            dispatch.embedding_backward(dout, (ids, (5, 4), np.float64))


def test_arrays_the_kernels_are_not_built_for_take_the_numpy_code(monkeypatch):
    """With the kernels on: subclassed arrays in the ops (they accept native float32/float64 only), float16 and
    byte-swapped buffers in the optimizers (they accept any float), and partly overlapping in-place views."""
    from scratchllm.kernels.flat import flatten_params
    from scratchllm.optim import Adagrad, AdamW

    monkeypatch.setenv(kernels.ENV_VAR, "1")
    class Tagged(np.ndarray):
        pass

    x = normal(0, (3, 20), np.float32, 2.0)
    a, w, b = x.view(Tagged), np.asarray(x[0]).view(Tagged), np.asarray(x[1]).view(Tagged)
    for forward, backward, inputs in ((ops.softmax_forward, ops.softmax_backward, (a,)),
                                      (ops.gelu_forward, ops.gelu_backward, (a,)),
                                      (ops.layernorm_forward, ops.layernorm_backward, (a, w, b))):
        out, cache = forward(*inputs)
        assert type(out) is Tagged  # the NumPy code keeps the subclass; a kernel would not
        dout = random_dout(np.asarray(out))
        grads = backward(dout.view(Tagged), cache)
        monkeypatch.setenv(kernels.ENV_VAR, "0")  # the same numbers as plain arrays through the NumPy code
        plain_out, plain_cache = forward(*[np.asarray(i) for i in inputs])
        np.testing.assert_allclose(np.asarray(out), plain_out, rtol=1e-6)
        for g, g_plain in zip(grads, backward(dout, plain_cache)):
            np.testing.assert_allclose(np.asarray(g), g_plain, rtol=1e-5, atol=1e-6)
        monkeypatch.setenv(kernels.ENV_VAR, "1")
    for dt in (np.float16, ">f4"):
        _, params = flatten_params({"w": np.ones((4, 3), dt)})
        _, grads = flatten_params({"w": np.full((4, 3), 0.5, dt)})
        for opt in (AdamW(params, lr=0.1), Adagrad(params, lr=0.1)):
            opt.step(grads)
        assert np.all(params["w"] < 1)
    from scratchllm.kernels.cpu.rows import softmax_rows

    buf = (np.arange(12) / 3).reshape(4, 3).astype(np.float32)  # y one row below x: overlapping views
    expected = np.exp(buf[:3] - buf[:3].max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    softmax_rows(buf[:3], buf[1:])
    np.testing.assert_allclose(buf[1:], expected, rtol=1e-6)


def test_a_nan_score_in_a_future_key_does_not_reach_earlier_queries(monkeypatch):
    """Masked scores are overwritten, not added to (NaN + -inf is NaN): kernel, NumPy code and torch agree."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, 4, 8)).astype(np.float32)
    k = q.copy()
    k[0, 0, 3, 0] = np.nan  # key 3: only query 3 sees it
    for switch in ("1", "0"):
        monkeypatch.setenv(kernels.ENV_VAR, switch)
        for out in (dispatch.attention_forward(q, k, q)[0], dispatch.attention_blocked_forward(q, k, q, block=2)[0]):
            assert np.isnan(out).any(-1).ravel().tolist() == [False, False, False, True], switch

