"""The checker's own contract: modes, wrt, names, the report, and the extra checks."""

import numpy as np
import pytest

from scratchllm import ops
from scratchllm.gradcheck import GradcheckError, GradcheckReport, gradcheck
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
