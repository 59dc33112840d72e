"""rope (scratchllm/ops/rope.py): pairs turned by position-dependent angles. The scores depend on the positions only
through their difference; the backward is the inverse rotation; Hugging Face Llama's rotary embedding agrees;
gradchecks; clear errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.ops import rope_backward, rope_forward
from tests.helpers import assert_gradcheck, normal, seeds


def test_each_pair_turns_by_its_angle():
    x = normal(0, (1, 1, 3, 4))
    positions = np.array([0, 5, 9])
    out, _ = rope_forward(x, positions, theta=100.0)
    for t, pos in enumerate(positions):
        for i in range(2):
            ang = pos * 100.0 ** (-2 * i / 4)
            a, b = x[0, 0, t, i], x[0, 0, t, i + 2]
            np.testing.assert_allclose(out[0, 0, t, [i, i + 2]],
                                       [a * np.cos(ang) - b * np.sin(ang), b * np.cos(ang) + a * np.sin(ang)],
                                       rtol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-13)  # rotations


def test_scores_depend_on_the_distance_only():
    q, k = normal(1, (1, 1, 1, 8)), normal(2, (1, 1, 1, 8))
    scores = [float((rope_forward(q, np.array([s]))[0] * rope_forward(k, np.array([s - 3]))[0]).sum())
              for s in (3, 10, 50)]
    np.testing.assert_allclose(scores, scores[0], rtol=1e-12)


def test_the_backward_is_the_inverse_rotation():
    x = normal(3, (2, 3, 4, 6))
    out, cache = rope_forward(x, np.arange(4) + 11)
    back, none = rope_backward(out, cache)  # R^T R x = x
    assert none is None
    np.testing.assert_allclose(back, x, rtol=1e-12, atol=1e-13)


@given(seed=seeds, B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, 4), half=st.integers(1, 3),
       start=st.integers(0, 100), per_row=st.booleans())
def test_gradcheck_property(seed, B, H, T, half, start, per_row):
    positions = np.arange(start, start + T)
    if per_row:
        positions = positions[None, :] + 7 * np.arange(B)[:, None]
    assert_gradcheck(lambda x: rope_forward(x, positions), rope_backward, (normal(seed, (B, H, T, 2 * half)),))


def test_hugging_face_llama_agrees():
    torch = pytest.importorskip("torch")
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=32, num_attention_heads=2, rope_theta=10000.0, max_position_embeddings=64)
    rotary = llama.LlamaRotaryEmbedding(cfg)
    x = normal(4, (2, 2, 5, 16), np.float32)
    positions = np.arange(5)[None, :] + np.array([[0], [30]])  # two rows at other offsets
    cos, sin = rotary(torch.tensor(x), torch.tensor(positions))
    want, _ = llama.apply_rotary_pos_emb(torch.tensor(x), torch.tensor(x), cos, sin)
    got, _ = rope_forward(x, positions)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=3e-5)  # HF takes its angles in float32


@pytest.mark.parametrize("x, positions, error, match", [
    (np.zeros((1, 1, 2, 3)), np.arange(2), ValueError, r"last axis \(D\) must be even.*got D=3"),
    (np.zeros((1, 1, 2, 4)), np.arange(3), ValueError, r"positions must have shape \(T,\) = \(2,\) or \(B, T\)"),
    (np.zeros((1, 1, 2, 4)), np.arange(2.0), TypeError, "positions must have an integer dtype"),
    (np.zeros((2, 4)), np.arange(2), ValueError, "x must have 4 dimensions"),
])
def test_bad_inputs_are_named(x, positions, error, match):
    with pytest.raises(error, match=match):
        rope_forward(x, positions)
