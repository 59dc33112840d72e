import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.ops import embedding_backward, embedding_forward
from tests.helpers import assert_gradcheck, normal, seeds, torch_oracle


def test_forward_is_a_row_lookup():
    table = normal(0, (5, 3))
    idx = np.array([[4, 0, 4], [1, 1, 2]])
    out, _ = embedding_forward(idx, table)
    for b in range(2):
        for t in range(3):
            np.testing.assert_array_equal(out[b, t], table[idx[b, t]])


def test_repeated_ids_accumulate():
    table = normal(0, (4, 2))
    idx = np.array([[3, 3, 3, 1]])
    dout = normal(1, (1, 4, 2))
    _, cache = embedding_forward(idx, table)
    didx, dtable = embedding_backward(dout, cache)
    assert didx is None
    np.testing.assert_allclose(dtable[3], dout[0, :3].sum(axis=0), rtol=1e-14)
    np.testing.assert_allclose(dtable[1], dout[0, 3])
    np.testing.assert_array_equal(dtable[[0, 2]], 0.0)


@given(seed=seeds, B=st.integers(1, 3), T=st.integers(1, 5), V=st.integers(1, 6), C=st.integers(1, 4))
def test_gradcheck_property(seed, B, T, V, C):
    idx = np.random.default_rng(seed).integers(0, V, size=(B, T))  # V small: ids repeat often
    assert_gradcheck(embedding_forward, embedding_backward, (idx, normal(seed, (V, C)))).inputs[0].name == "table"


def test_torch_oracle():
    torch = pytest.importorskip("torch")
    idx = np.random.default_rng(0).integers(0, 5, size=(3, 7))
    torch_oracle(embedding_forward, embedding_backward, (idx, normal(1, (5, 4))),
                 lambda i, t: torch.nn.functional.embedding(i, t))


@pytest.mark.parametrize("idx, match", [
    (np.array([[0, 5]]), "outside \\[0, 5\\)"),
    (np.array([[-1, 0]]), "outside"),
    (np.array([[0.0, 1.0]]), "idx must have an integer dtype"),
])
def test_bad_ids_are_refused(idx, match):
    with pytest.raises((ValueError, TypeError), match=match):
        embedding_forward(idx, normal(0, (5, 2)))
