"""The checker must catch wrong backwards. Each planted bug is a small, realistic mistake; gradcheck must
raise GradcheckError naming the input whose gradient is wrong (or the contract rule that is broken)."""

import math

import numpy as np
import pytest

from scratchllm import ops
from scratchllm.gradcheck import GradcheckError, gradcheck
from tests.helpers import normal


def ln_no_mean_term(dout, cache):
    norm, rstd, w = cache
    dx, dw, db = ops.layernorm_backward(dout, cache)
    dnorm = dout * w
    return rstd * (dnorm - norm * (dnorm * norm).mean(-1, keepdims=True)), dw, db  # forgot - mean(dnorm)


def ln_no_norm_term(dout, cache):
    norm, rstd, w = cache
    _, dw, db = ops.layernorm_backward(dout, cache)
    dnorm = dout * w
    return rstd * (dnorm - dnorm.mean(-1, keepdims=True)), dw, db  # forgot the term through rstd


def ln_dw_drops_a_row(dout, cache):
    dx, dw, db = ops.layernorm_backward(dout, cache)
    norm = cache[0]
    return dx, (dout[1:] * norm[1:]).sum(axis=0), db  # off by one: the first row is lost


def linear_dw_transposed(dout, cache):
    dx, dw, db = ops.linear_backward(dout, cache)
    return dx, dw.T, db  # square w, so the shape check cannot save us


def linear_one_wrong_element(dout, cache):
    dx, dw, db = ops.linear_backward(dout, cache)
    dw = dw.copy()
    dw[1, 2] *= 1.001  # one element off by 0.1 %
    return dx, dw, db


def softmax_no_subtraction(dout, cache):
    y, axis = cache
    return (y * dout,)  # forgot - sum(dout * y)


def softmax_wrong_axis(dout, cache):
    y, axis = cache
    return (y * (dout - (dout * y).sum(axis=-1, keepdims=True)),)  # summed over the last axis, not `axis`


def gelu_missing_half(dout, cache):
    x, th, _ = cache
    du_dx = math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x * x)
    return (dout * (0.5 * (1 + th) + x * (1 - th * th) * du_dx),)  # the 0.5 of the second term is missing


def gelu_tanh_with_erf_derivative(dout, cache):
    x, th, _ = cache
    _, erf_cache = ops.gelu_forward(x, approximate="none")
    return ops.gelu_backward(dout, erf_cache)  # right for the exact GELU, ~1e-3 off for the tanh form


def embedding_assigns(dout, cache):
    idx, (V, C), dtype = cache
    dtable = np.zeros((V, C), dtype)
    dtable[idx.reshape(-1)] = dout.reshape(-1, C)  # repeated ids: the last write wins, nothing accumulates
    return None, dtable


def embedding_fancy_add(dout, cache):
    idx, (V, C), dtype = cache
    dtable = np.zeros((V, C), dtype)
    dtable[idx.reshape(-1)] += dout.reshape(-1, C)  # looks like accumulation, is not (buffered fancy +=)
    return None, dtable


def attention_dk_unscaled(dout, cache):
    dq, dk, dv = ops.attention_backward(dout, cache)
    return dq, dk * math.sqrt(cache[0].shape[-1]), dv  # dk without the 1/sqrt(D) scale


def attention_dv_untransposed(dout, cache):
    dq, dk, _ = ops.attention_backward(dout, cache)
    p = cache[3][0]
    return dq, dk, p @ dout  # p instead of p^T


def ce_mean_over_all_rows(dout, cache):
    logits, lse, t_safe, keep, count = cache
    dlogits, _ = ops.cross_entropy_backward(dout, cache)
    return dlogits * max(count, 1) / keep.size, None  # divides by every row, ignored ones included


def gelu_mutates_dout(dout, cache):
    dout *= 1.0  # in place: the caller's dout is modified (values unchanged, identity violated)
    dout += 0.0
    dout[...] = dout * 2.0
    return (ops.gelu_backward(dout, cache)[0] / 2.0,)


def gelu_nonzero_for_zero_dout(dout, cache):
    return (ops.gelu_backward(dout, cache)[0] + 1e-12,)  # a stray constant


def inputs(name, seed=0):
    if name == "linear_square":
        return normal(seed, (3, 4)), normal(seed + 1, (4, 4)), normal(seed + 2, (4,))
    if name == "embedding":
        return np.array([[0, 2, 2], [1, 2, 0]]), normal(seed, (3, 4))
    return ops.OPS[name].make_inputs(seed=seed)


# (bug, the op's forward, inputs, what the error message must name)
BUGS = {
    "layernorm missing mean(dnorm)": (ln_no_mean_term, ops.layernorm_forward, "layernorm", "'x'"),
    "layernorm missing the rstd term": (ln_no_norm_term, ops.layernorm_forward, "layernorm", "'x'"),
    "layernorm dw drops a row": (ln_dw_drops_a_row, ops.layernorm_forward, "layernorm", "'w'"),
    "linear dw transposed": (linear_dw_transposed, ops.linear_forward, "linear_square", "'w'"),
    "linear one wrong element": (linear_one_wrong_element, ops.linear_forward, "linear_square", "'w'"),
    "softmax missing the subtraction": (softmax_no_subtraction, ops.softmax_forward, "softmax", "'x'"),
    "softmax sums over the wrong axis": (softmax_wrong_axis, ops.OPS["softmax_axis1"].forward, "softmax_axis1",
                                         "'x'"),
    "gelu wrong scale": (gelu_missing_half, ops.gelu_forward, "gelu", "'x'"),
    "gelu tanh with the erf derivative": (gelu_tanh_with_erf_derivative, ops.gelu_forward, "gelu", "'x'"),
    "embedding assignment": (embedding_assigns, ops.embedding_forward, "embedding", "'table'"),
    "embedding buffered fancy +=": (embedding_fancy_add, ops.embedding_forward, "embedding", "'table'"),
    "attention dk unscaled": (attention_dk_unscaled, ops.attention_forward, "attention", "'k'"),
    "attention dv without transpose": (attention_dv_untransposed, ops.attention_forward, "attention", "'v'"),
    "cross_entropy mean over ignored rows": (ce_mean_over_all_rows, ops.cross_entropy_forward, "cross_entropy",
                                             "'logits'"),
    "backward mutates dout": (gelu_mutates_dout, ops.gelu_forward, "gelu", "dout not mutated"),
    "nonzero grad for zero dout": (gelu_nonzero_for_zero_dout, ops.gelu_forward, "gelu", "zero dout"),
}
VALUE_BUGS = [k for k in BUGS if k not in ("backward mutates dout", "nonzero grad for zero dout")]


def test_there_are_at_least_eight_distinct_value_bugs():
    assert len(VALUE_BUGS) >= 8


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_full_mode_catches_the_bug_and_names_the_input(bug):
    backward, forward, which, named = BUGS[bug]
    with pytest.raises(GradcheckError, match=named) as info:
        gradcheck(forward, backward, inputs(which), mode="full")
    assert not info.value.report.ok


@pytest.mark.parametrize("bug", VALUE_BUGS)
@pytest.mark.parametrize("mode", ["directional", "auto"])
def test_other_modes_catch_value_bugs(bug, mode):
    backward, forward, which, named = BUGS[bug]
    report = gradcheck(forward, backward, inputs(which, seed=7), mode=mode, raise_on_fail=False)
    assert not report.ok
    assert any(not r.ok for r in report.inputs if f"'{r.name}'" == named)


@pytest.mark.parametrize("bug", VALUE_BUGS)
def test_the_correct_backward_passes_where_the_bug_fails(bug):
    _, forward, which, _ = BUGS[bug]
    correct = {ops.layernorm_forward: ops.layernorm_backward, ops.linear_forward: ops.linear_backward,
               ops.gelu_forward: ops.gelu_backward, ops.embedding_forward: ops.embedding_backward,
               ops.attention_forward: ops.attention_backward, ops.cross_entropy_forward: ops.cross_entropy_backward}
    backward = correct.get(forward, ops.softmax_backward)
    assert gradcheck(forward, backward, inputs(which), mode="full").ok
