"""No false pass, ever: an inf or NaN in an analytic gradient, a numeric derivative or the forward's output
fails the check in every mode, and the report names the input, the element and the value.

The op is a user's soft clipping y = a * tanh(x / a) with a per-channel a (docs/examples/softclip.py); each
planted bug puts one non-finite value into dx at element (1, 2), only where dout is nonzero, so the
zero-dout check cannot be what catches it."""

import numpy as np
import pytest

from scratchllm.gradcheck import GradcheckError, gradcheck
from tests.helpers import normal

MODES = ("full", "directional", "sampled", "auto")
BAD = (1, 2)


def softclip_forward(x, a):
    u = x / a
    t = np.tanh(u)
    return a * t, (u, t)


def softclip_backward(dout, cache):
    u, t = cache
    dt = 1 - t * t
    return dout * dt, (dout * (t - u * dt)).sum(axis=0)


def planted(value):
    """softclip's backward with dx[1, 2] = value wherever dout is nonzero (zero dout still gives zeros)."""

    def backward(dout, cache):
        dx, da = softclip_backward(dout, cache)
        dx = dx.copy()
        if np.any(dout):
            dx[BAD] = value
        return dx, da

    return backward


def inputs():
    return normal(0, (6, 8), scale=2.0), 0.5 + np.random.default_rng(1).random(8)


@pytest.mark.parametrize("mode", MODES)
def test_the_correct_backward_passes(mode):
    assert gradcheck(softclip_forward, softclip_backward, inputs(), mode=mode).ok


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("mode", MODES)
def test_a_nonfinite_gradient_fails_and_is_named(mode, value):
    report = gradcheck(softclip_forward, planted(value), inputs(), mode=mode, raise_on_fail=False)
    assert not report.ok
    x_report, a_report = report.inputs
    assert not x_report.ok and a_report.ok
    assert x_report.n_nonfinite == 1
    # the element is compared whatever the mode, and comes first among the worst
    assert x_report.worst[0].where == BAD
    assert x_report.worst[0].analytic == value or np.isnan(value) and np.isnan(x_report.worst[0].analytic)
    # the statistics ignore nothing: no small "max abs err" for a NaN or an inf
    assert not np.isfinite(x_report.max_abs_err) and not np.isfinite(report.max_abs_err)
    assert not np.isfinite(x_report.max_rel_err)
    if np.isnan(value):
        assert np.isnan(x_report.max_abs_err) and np.isnan(report.max_rel_err)
    failed = [detail for name, ok, detail in report.checks if not ok]
    assert failed == [f"grad of 'x' has 1 non-finite of 48 elements: {BAD} = {value}"]
    with pytest.raises(GradcheckError, match=r"input 'x'.*\n.*\n    \(1, 2\): (-?inf|nan)"):
        gradcheck(softclip_forward, planted(value), inputs(), mode=mode)


def test_nan_also_at_zero_dout_is_named_as_nan_not_only_as_nonzero():
    def backward(dout, cache):
        dx, da = softclip_backward(dout, cache)
        dx = dx.copy()
        dx[BAD] = np.nan
        return dx, da

    report = gradcheck(softclip_forward, backward, inputs(), mode="full", raise_on_fail=False)
    failed = {name: detail for name, ok, detail in report.checks if not ok}
    assert set(failed) == {"grads finite", "zero dout gives zero grads"}
    assert f"{BAD} = nan" in failed["grads finite"]
    zero = failed["zero dout gives zero grads"]
    assert f"{BAD} = nan" in zero and "non-finite" in zero
    assert not report.inputs[0].ok and np.isnan(report.inputs[0].max_abs_err)
    assert "max abs err nan" in str(report)


def test_a_nonfinite_numeric_derivative_fails():
    def log_forward(x):
        with np.errstate(invalid="ignore"):
            return np.log(x), x

    def log_backward(dout, x):
        return (dout / x,)

    x = np.array([1.0, 2.0, 3e-6, 0.5])  # log(x - eps) is nan at the third element
    report = gradcheck(log_forward, log_backward, (x,), mode="full", raise_on_fail=False)
    assert not report.ok and report.inputs[0].worst[0].where == (2,)
    assert np.isnan(report.inputs[0].worst[0].numeric)
    failed = {name: detail for name, ok, detail in report.checks if not ok}
    assert "the numeric derivative of 'x' at (2,) is nan" in failed["numeric derivatives finite"]
    assert gradcheck(log_forward, log_backward, (x + 1.0,), mode="full").ok


def test_a_nonfinite_output_fails():
    def forward(x):
        out = 2 * x
        out[0] = np.inf
        return out, None

    report = gradcheck(forward, lambda d, c: (2 * d,), (normal(0, (3,)),), mode="directional", raise_on_fail=False)
    assert not report.ok
    assert [name for name, ok, _ in report.checks if not ok][0] == "forward output finite"
    assert "(0,) = inf" in str(report)


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_float32_inputs_with_a_nonfinite_gradient_fail(value):
    x, a = inputs()
    report = gradcheck(softclip_forward, planted(value), (x.astype(np.float32), a.astype(np.float32)),
                       raise_on_fail=False)
    assert not report.ok and not report.inputs[0].ok


def test_infinite_or_nan_tolerances_are_refused():
    for kw in (dict(atol=np.inf), dict(rtol=np.inf), dict(atol=np.nan), dict(rtol=-1.0), dict(eps=np.inf)):
        with pytest.raises(ValueError, match="atol|eps"):
            gradcheck(softclip_forward, softclip_backward, inputs(), **kw)


def test_a_nan_only_in_the_float32_gradient_is_named():
    def backward(dout, cache):
        dx, da = softclip_backward(dout, cache)
        if dx.dtype == np.float32:
            dx = dx.copy()
            dx[BAD] = np.nan
        return dx, da

    x, a = inputs()
    report = gradcheck(softclip_forward, backward, (x.astype(np.float32), a.astype(np.float32)),
                       raise_on_fail=False)
    failed = {name: detail for name, ok, detail in report.checks if not ok}
    assert failed["grads finite"] == f"float32 grad of 'x' has 1 non-finite of 48 elements: {BAD} = nan"
