"""Generation: the KV cache reproduces a full recompute, sampling rules, window sliding."""

import numpy as np
import pytest

from scratchllm.generate import generate_ids, sample_next
from scratchllm.model import GPT, GPTConfig

CFG = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)


def model(dtype="float64"):
    m = GPT(CFG, seed=1, dtype=dtype, backend="numpy")
    rng = np.random.default_rng(2)
    for k, v in m.params.items():
        m.params[k] = (v + 0.3 * rng.standard_normal(v.shape)).astype(dtype)
    return m.eval()


def test_kv_cache_gives_the_same_logits_as_a_full_recompute():
    m = model()
    ids = np.random.default_rng(0).integers(0, 13, (2, 8))
    full = m.forward(ids)[0]  # (2, 8, 13)
    kv = {}
    first = m.forward(ids[:, :3], kv_cache=kv)[0]  # a prompt of 3 tokens
    steps = [m.forward(ids[:, t:t + 1], kv_cache=kv)[0] for t in range(3, 8)]  # then one token at a time
    np.testing.assert_allclose(np.concatenate([first] + steps, axis=1), full, rtol=1e-12, atol=1e-13)
    assert kv[1][0].shape == (2, 2, 8, 8)
    with pytest.raises(ValueError, match="after 8 cached"):
        m.forward(ids[:, :1], kv_cache=kv)


def test_greedy_generation_matches_argmax_of_full_recomputes():
    m = model()
    prompt = [3, 1, 4]
    new = generate_ids(m, prompt, 10, temperature=0)  # runs past block_size=8: the window slides
    context = list(prompt)
    for token in new:
        window = np.asarray([context[-8:]])
        assert token == int(m.forward(window)[0][0, -1].argmax())
        context.append(token)
    assert generate_ids(m, prompt, 10, top_k=1, seed=5) == new  # top_k=1 is greedy too


def test_sampling_is_seeded_and_respects_top_k_and_top_p():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    draws = [int(sample_next(logits, rng, top_k=2)[0]) for _ in range(300)]
    assert set(draws) == {0, 1}
    draws = [int(sample_next(logits, rng, top_p=0.7)[0]) for _ in range(300)]
    assert set(draws) == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3
    draws = [int(sample_next(logits, rng, top_p=0.4)[0]) for _ in range(50)]
    assert set(draws) == {0}  # the most likely token always stays
    counts = np.bincount([int(sample_next(logits, rng)[0]) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    a = generate_ids(model(), [1, 2], 6, seed=9)
    assert a == generate_ids(model(), [1, 2], 6, seed=9) and a != generate_ids(model(), [1, 2], 6, seed=10)


def test_long_prompt_is_cropped_and_bad_arguments_are_refused():
    m = model()
    assert len(generate_ids(m, list(range(13)) * 3, 4, temperature=0)) == 4
    for kwargs, match in [(dict(temperature=-1), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=0), "top_p")]:
        with pytest.raises(ValueError, match=match):
            generate_ids(m, [1], 3, **kwargs)
    with pytest.raises(ValueError, match="at least one token"):
        generate_ids(m, [], 3)
