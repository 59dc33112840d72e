import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.ops import attention_backward, attention_forward, dropout_backward, dropout_forward
from tests.helpers import assert_gradcheck, normal, seeds


def test_mask_rate_scale_and_determinism():
    x = np.ones((200, 200), np.float32)
    out, _ = dropout_forward(x, p=0.3, rng=5)
    kept = out != 0
    assert out.dtype == np.float32 and abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(out[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(dropout_forward(x, p=0.3, rng=5)[0], out)  # an int seed: the same mask
    gen = np.random.default_rng(5)
    first, second = dropout_forward(x, 0.3, gen)[0], dropout_forward(x, 0.3, gen)[0]
    assert not np.array_equal(first, second)  # a Generator advances: a new mask per call


def test_one_generator_per_row_draws_each_row_alone():
    """A list of Generators: row b's mask is the one rng[b] draws for that row by itself, so rows cut into
    groups (data parallel's shards) get the masks of the whole."""
    x = normal(0, (4, 3, 5))
    out, _ = dropout_forward(x, 0.5, [np.random.default_rng([7, b]) for b in range(4)])
    for b in range(4):
        alone, _ = dropout_forward(x[b:b + 1], 0.5, [np.random.default_rng([7, b])])
        np.testing.assert_array_equal(out[b:b + 1], alone)
    assert not np.array_equal(out[0] != 0, out[1] != 0)  # rows draw different masks
    with pytest.raises(ValueError, match=r"rng must hold one Generator per row of x \(4\); got 3"):
        dropout_forward(x, 0.5, [np.random.default_rng(b) for b in range(3)])


def test_p_zero_is_the_identity():
    x = normal(0, (3, 4))
    out, cache = dropout_forward(x, 0.0)
    assert out is x
    dout = normal(1, (3, 4))
    assert dropout_backward(dout, cache)[0] is dout


@given(seed=seeds, shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), p=st.sampled_from([0.1, 0.5, 0.9]))
def test_gradcheck_property(seed, shape, p):
    assert_gradcheck(lambda x: dropout_forward(x, p, seed), dropout_backward, (normal(seed, shape),))


def test_attention_dropout_drops_weights_and_checks():
    q, k, v = (normal(s, (1, 2, 5, 3)) for s in range(3))
    plain, _ = attention_forward(q, k, v)
    same, _ = attention_forward(q, k, v, dropout=0.0, rng=3)
    dropped, _ = attention_forward(q, k, v, dropout=0.5, rng=3)
    np.testing.assert_array_equal(plain, same)
    assert not np.allclose(plain, dropped)
    assert_gradcheck(lambda *a: attention_forward(*a, dropout=0.5, rng=3), attention_backward, (q, k, v))


@pytest.mark.parametrize("kwargs, match", [(dict(p=1.0, rng=0), "p must be in \\[0, 1\\)"),
                                           (dict(p=-0.1, rng=0), "p must be in"),
                                           (dict(p=0.5), "rng must be")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dropout_forward(np.zeros(3), **kwargs)
