"""The checker's own contract: modes, wrt, names, the report, and the extra checks."""

import inspect

import numpy as np
import pytest

from scratchllm import ops
from scratchllm.gradcheck import GradcheckError, GradcheckReport, auto_modes, gradcheck
from tests.helpers import normal


def square_forward(x, y):
    """A user's op, written outside the package: out = x * x * y."""
    return x * x * y, (x, y)


def square_backward(dout, cache):
    x, y = cache
    return 2 * x * y * dout, x * x * dout


def test_a_users_own_op_passes_in_every_mode():
    x, y = normal(0, (3, 4)), normal(1, (3, 4))
    for mode in ("full", "directional", "sampled", "auto"):
        report = gradcheck(square_forward, square_backward, (x, y), mode=mode)
        assert isinstance(report, GradcheckReport) and report.ok
        assert [r.name for r in report.inputs] == ["x", "y"]
        assert report.max_rel_err < 1e-9


def test_error_is_an_assertion_error_that_names_input_elements_and_settings():
    def bad_backward(dout, cache):
        dx, dy = square_backward(dout, cache)
        return dx, dy * 1.01

    with pytest.raises(AssertionError) as info:
        gradcheck(square_forward, bad_backward, (normal(0, (2, 3)), normal(1, (2, 3))), seed=5)
    msg = str(info.value)
    assert isinstance(info.value, GradcheckError)
    assert "input 'y'" in msg and "input 'x'" not in msg
    assert "worst elements" in msg and "analytic" in msg and "seed=5" in msg and "eps=" in msg


def test_raise_on_fail_false_returns_the_failing_report():
    report = gradcheck(square_forward, lambda d, c: (square_backward(d, c)[0], 0 * d), (normal(0, (4,)),
                       normal(1, (4,))), raise_on_fail=False)
    assert not report.ok
    assert [r.ok for r in report.inputs] == [True, False]
    assert report.inputs[1].max_rel_err == pytest.approx(1.0)
    assert "NO" in str(report)


def test_wrt_restricts_the_check_and_names_override():
    def bad_y(dout, cache):
        return square_backward(dout, cache)[0], None

    report = gradcheck(square_forward, bad_y, (normal(0, (3,)), normal(1, (3,))), wrt=[0], names=["a", "b"])
    assert [r.name for r in report.inputs] == ["a"]
    with pytest.raises(ValueError, match="wrt index 2"):
        gradcheck(square_forward, square_backward, (normal(0, (3,)), normal(1, (3,))), wrt=[2])


def test_auto_picks_full_for_small_and_sampled_plus_directional_for_large():
    small = gradcheck(ops.gelu_forward, ops.gelu_backward, (normal(0, (10,)),), mode="auto")
    large = gradcheck(ops.gelu_forward, ops.gelu_backward, (normal(0, (50, 50)),), mode="auto", n_samples=10)
    assert small.inputs[0].mode == "full" and small.inputs[0].n_checked == 10
    assert large.inputs[0].mode == "sampled+directional" and large.inputs[0].n_checked == 10 + 4


def test_integer_inputs_are_skipped_and_must_get_none():
    idx = np.array([[0, 1, 1]])
    table = normal(0, (2, 3))
    report = gradcheck(ops.embedding_forward, ops.embedding_backward, (idx, table))
    assert [r.name for r in report.inputs] == ["table"]
    with pytest.raises(GradcheckError, match="integer array; its grad must be None"):
        gradcheck(ops.embedding_forward, lambda d, c: (np.zeros((1, 3)), ops.embedding_backward(d, c)[1]),
                  (idx, table))


def test_wrong_grad_shape_and_wrong_arity_are_reported():
    x = normal(0, (2, 3))
    with pytest.raises(GradcheckError, match="must have shape \\(2, 3\\)"):
        gradcheck(ops.gelu_forward, lambda d, c: (ops.gelu_backward(d, c)[0].ravel(),), (x,))
    with pytest.raises(GradcheckError, match="one entry per input"):
        gradcheck(ops.gelu_forward, lambda d, c: ops.gelu_backward(d, c)[0], (x,))


def test_forward_that_mutates_its_input_is_caught():
    def forward(x):
        x += 0.0  # in place (a no-op here) ...
        x *= 1.0
        out = x * 2
        x[0] = 123.0  # ... and a real change
        return out, None

    with pytest.raises(GradcheckError, match="changed input 'x' in place"):
        gradcheck(forward, lambda d, c: (2 * d,), (normal(0, (3,)),), mode="directional")


def test_float32_grad_must_keep_its_dtype():
    def forward(x):
        return x * 3, x.dtype

    def backward(dout, dtype):
        return (np.asarray(dout, dtype=np.float64) * 3,)  # always float64: float32 users get promoted

    with pytest.raises(GradcheckError, match="must keep dtype float32"):
        gradcheck(forward, backward, (normal(0, (4,), np.float32),))
    assert gradcheck(forward, backward, (normal(0, (4,)),)).ok


def test_dout_is_random_seeded_and_not_all_ones():
    seen = []

    def backward(dout, cache):
        seen.append(np.array(dout))
        return ops.gelu_backward(dout, cache)

    x = normal(0, (5,))
    gradcheck(ops.gelu_forward, backward, (x,), seed=3, mode="directional")
    gradcheck(ops.gelu_forward, backward, (x,), seed=3, mode="directional")
    first, zero, second = seen[0], seen[1], seen[2]
    assert not np.all(first == 1.0) and np.unique(first).size == first.size
    assert not zero.any()  # the zero-dout check
    np.testing.assert_array_equal(first, second)


def test_bad_arguments():
    x = normal(0, (3,))
    with pytest.raises(ValueError, match="mode must be one of"):
        gradcheck(ops.gelu_forward, ops.gelu_backward, (x,), mode="exact")
    with pytest.raises(ValueError, match="eps must be positive"):
        gradcheck(ops.gelu_forward, ops.gelu_backward, (x,), eps=0)


def test_a_passing_report_says_what_it_checked():
    x, y = normal(0, (6, 8)), normal(1, (6, 8))
    report = gradcheck(square_forward, square_backward, (x, y), mode="sampled", n_samples=24)
    assert [(r.n_elements, r.size, r.n_directions) for r in report.inputs] == [(24, 48, 0)] * 2
    assert report.inputs[0].checked == "24 of 48 elements"
    text = str(report)
    assert "24 of 48 elements" in text and "sampled" in text and "atol 1e-10" in text and "rtol 1e-07" in text
    for check in ("zero dout gives zero grads", "inputs not mutated", "dout not mutated", "grad shapes",
                  "grad dtypes", "grads finite", "forward output finite"):
        assert check in report.check_names() and check in text.replace("\n  ", " ")
    directional = gradcheck(square_forward, square_backward, (x, y), mode="directional", n_directions=3)
    assert directional.inputs[0].checked == "3 directions"
    assert gradcheck(square_forward, square_backward, (x, y), mode="full").inputs[1].checked == "all 48 elements"


def test_sampled_mode_can_miss_one_element_and_says_so_and_auto_checks_it():
    x, y = normal(0, (6, 8)), normal(1, (6, 8))
    seen = gradcheck(square_forward, square_backward, (x, y), mode="sampled", n_samples=24, n_worst=24)
    compared = {m.where for m in seen.inputs[0].worst}
    missed = next((i, j) for i in range(6) for j in range(8) if (i, j) not in compared)

    def one_wrong(dout, cache):
        dx, dy = square_backward(dout, cache)
        dx = dx.copy()
        dx[missed] *= 1.01
        return dx, dy

    sampled = gradcheck(square_forward, one_wrong, (x, y), mode="sampled", n_samples=24)
    assert len(compared) == 24 and sampled.ok and "24 of 48 elements" in str(sampled)  # it says what it proves
    auto = gradcheck(square_forward, one_wrong, (x, y), mode="auto", raise_on_fail=False)
    assert not auto.ok and auto.inputs[0].worst[0].where == missed


def test_auto_checks_in_full_whatever_fits_in_the_time_of_the_other_full_checks():
    assert auto_modes({0: 120, 1: 60, 2: 60}, full_max=100) == {0: "full", 1: "full", 2: "full"}
    assert auto_modes({0: 121, 1: 60, 2: 60}, full_max=100)[0] == "sampled+directional"
    assert auto_modes({0: 1700, 1: 900, 2: 900}, full_max=1024)[0] == "full"
    x = normal(0, (2, 60), scale=2.0)  # layernorm: x has 120 elements, w and b 60 each
    w, b = 1.0 + normal(1, (60,), scale=0.3), normal(2, (60,))
    report = gradcheck(ops.layernorm_forward, ops.layernorm_backward, (x, w, b), full_max=100)
    assert [r.mode for r in report.inputs] == ["full"] * 3 and report.inputs[0].n_elements == 120


def test_a_failed_report_prints_the_worst_elements_as_index_tuples():
    def bad_backward(dout, cache):
        dx, dy = square_backward(dout, cache)
        dy = dy.copy()
        dy[1, 2] += 0.5
        return dx, dy

    x, y = normal(0, (3, 4)), normal(1, (3, 4))
    report = gradcheck(square_forward, bad_backward, (x, y), raise_on_fail=False)
    worst = report.inputs[1].worst[0]
    assert worst.where == (1, 2) and isinstance(worst.where[0], int)
    assert y[worst.where] == y[1, 2]
    assert worst.analytic - worst.numeric == pytest.approx(0.5)
    text = str(report)
    assert "FAILED" in text and "input 'y'" in text and "    (1, 2): " in text
    directional = gradcheck(square_forward, bad_backward, (x, y), mode="directional", raise_on_fail=False)
    assert directional.inputs[1].worst[0].where.startswith("direction ")


def test_a_python_float_input_is_checked_as_a_0d_array():
    def forward(x, a):
        return a * np.tanh(x / a), (x, a)

    def backward(dout, cache):
        x, a = cache
        t = np.tanh(x / a)
        return dout * (1 - t * t), (dout * (t - x / a * (1 - t * t))).sum()

    report = gradcheck(forward, backward, (normal(0, (3, 4)), 0.7))
    assert [(r.name, r.shape) for r in report.inputs] == [("x", (3, 4)), ("a", ())]
    with pytest.raises(GradcheckError, match="grad of 'a' must have shape \\(\\); got a float, not an array"):
        gradcheck(forward, lambda d, c: (backward(d, c)[0], float(backward(d, c)[1])), (normal(0, (3, 4)), 0.7))
    assert gradcheck(forward, lambda d, c: (backward(d, c)[0], None), (normal(0, (3, 4)), 2)).ok  # an int: a constant


def test_the_module_is_the_module_and_still_callable():
    import scratchllm
    import scratchllm.gradcheck as g

    assert inspect.ismodule(g) and g.GradcheckReport is GradcheckReport and g.gradcheck is gradcheck
    assert scratchllm.gradcheck is g
    assert g(square_forward, square_backward, (normal(0, (2,)), normal(1, (2,)))).ok


def test_sampled_elements_are_measured_against_the_largest_element_not_the_norm():
    def off(dout, cache):  # every element 1e-5 too large: 100 x rtol
        dx, dy = square_backward(dout, cache)
        return dx * (1 + 1e-5), dy

    x, y = normal(0, (60, 50)), normal(1, (60, 50))  # 3000 elements: auto samples them
    for mode in ("auto", "sampled"):
        report = gradcheck(square_forward, off, (x, y), mode=mode, raise_on_fail=False)
        assert not report.ok and not report.inputs[0].ok and report.inputs[1].ok, mode
        assert report.inputs[0].max_rel_err > 1e-6, mode  # about 1e-5, not 1e-5 / sqrt(3000)
    text = str(gradcheck(square_forward, off, (x, y), mode="auto", raise_on_fail=False))
    assert "<- over the tolerance" in text


def test_a_check_that_compares_nothing_is_refused():
    x, y = normal(0, (3,)), normal(1, (3,))
    for kw, says in ((dict(mode="directional", n_directions=0), "n_directions"),
                     (dict(mode="sampled", n_samples=0), "n_samples"), (dict(wrt=[]), "nothing to check"),
                     (dict(seed=-3), "seed"), (dict(seed=None), "seed"), (dict(wrt=["x"]), "wrt index 'x'")):
        with pytest.raises(ValueError, match=says):
            gradcheck(square_forward, square_backward, (x, y), **kw)
    with pytest.raises(ValueError, match="no float input"):
        gradcheck(lambda i: (i * 1.0, None), lambda d, c: (None,), (np.arange(3),))


def test_a_forward_without_its_cache_is_a_failed_contract_check():
    report = gradcheck(lambda x: x * 2, lambda d, c: (2 * d,), (normal(0, (3,)),), raise_on_fail=False)
    assert not report.ok
    assert report.checks == [("forward returns (out, cache)", False, "forward must return (out, cache) with out a "
                              "float array; got a float64 array (out alone? return out, cache)")]
