import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.ops import cross_entropy_backward, cross_entropy_forward
from tests.helpers import assert_gradcheck, normal, seeds, torch_oracle


def test_forward_matches_the_definition():
    logits = normal(0, (2, 3, 4), scale=2.0)
    targets = np.array([[0, 3, -1], [2, 2, 1]])
    loss, _ = cross_entropy_forward(logits, targets)
    rows = [(b, t) for b in range(2) for t in range(3) if targets[b, t] != -1]
    ref = np.mean([np.log(np.exp(logits[b, t]).sum()) - logits[b, t, targets[b, t]] for b, t in rows])
    assert loss.shape == () and loss.dtype == np.float64
    np.testing.assert_allclose(loss, ref, rtol=1e-14)


@given(seed=seeds, lead=st.lists(st.integers(1, 4), min_size=0, max_size=2), V=st.integers(1, 6),
       p_ignore=st.sampled_from([0.0, 0.3, 1.0]), ignore_index=st.sampled_from([-1, -100]))
def test_gradcheck_property(seed, lead, V, p_ignore, ignore_index):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, V, size=lead)
    targets = np.where(rng.random(lead) < p_ignore, ignore_index, targets)
    logits = normal(seed, (*lead, V), scale=3.0)
    assert_gradcheck(lambda x, t: cross_entropy_forward(x, t, ignore_index), cross_entropy_backward,
                     (logits, targets))


def test_torch_oracle_with_ignored_targets():
    torch = pytest.importorskip("torch")
    logits = normal(0, (3, 4, 7), scale=2.0)
    targets = np.random.default_rng(1).integers(0, 7, size=(3, 4))
    targets[0, :2] = -1
    torch_oracle(cross_entropy_forward, cross_entropy_backward, (logits, targets),
                 lambda x, t: torch.nn.functional.cross_entropy(x.reshape(-1, 7), t.reshape(-1), ignore_index=-1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_of_plus_minus_1e4_and_all_ignored_never_nan(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype=dtype)
    loss, cache = cross_entropy_forward(logits, np.array([1, 2]))
    dlogits, dtargets = cross_entropy_backward(np.asarray(1.0, dtype), cache)
    assert dtargets is None and np.isfinite(loss) and np.isfinite(dlogits).all()
    np.testing.assert_allclose(loss, 1e4, rtol=1e-6)
    loss, cache = cross_entropy_forward(logits, np.array([-1, -1]))
    (dlogits, _) = cross_entropy_backward(2.0, cache)
    assert loss == 0.0 and loss.dtype == dtype and not dlogits.any()


def test_dout_scales_the_gradient_and_python_scalars_work():
    logits, targets = normal(0, (4, 5)), np.array([0, 1, 2, 3])
    _, cache = cross_entropy_forward(logits, targets)
    g1 = cross_entropy_backward(1.0, cache)[0]
    g3 = cross_entropy_backward(np.float64(3.0), cache)[0]
    np.testing.assert_allclose(g3, 3 * g1, rtol=1e-15)
    np.testing.assert_allclose(g1.sum(axis=-1), 0.0, atol=1e-15)  # softmax minus one-hot sums to zero


@pytest.mark.parametrize("targets, match", [
    (np.array([[0, 5]]), "targets must lie in \\[0, 5\\)"),
    (np.array([0, 1]), "targets must have shape \\(1, 2\\)"),
    (np.array([[0.0, 1.0]]), "targets must have an integer dtype"),
])
def test_bad_targets_are_refused(targets, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cross_entropy_forward(np.zeros((1, 2, 5)), targets)
