"""DataParallel (scratchllm/parallel/data_parallel.py): the batch in shards gives the one-pass numbers whatever
the number of workers, dropout included; the same bits run to run for a given number; the model's interface."""

import numpy as np
import pytest

from scratchllm.kernels.flat import flat_span
from scratchllm.model import ATTN_BLOCK, GPT, GPTConfig
from scratchllm.optim import AdamW, clip_grad_norm, decay_groups
from scratchllm.parallel import DataParallel
from tests.test_model import attention_weights_kept, batch, model_gradcheck, perturbed_model

DROPPY = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.1)


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_shards_give_the_one_pass_numbers(workers):
    """The logits, the loss and every gradient equal the model's own pass over the whole batch; a row whose
    targets are all ignored checks that the shards are weighted by their kept targets, not averaged."""
    model = perturbed_model()
    idx, targets = batch(B=4, T=5)
    targets[1, :] = -1
    logits1, loss1, cache1 = model.forward(idx, targets)
    grads1 = model.backward(cache1, dloss=0.7)
    dp = DataParallel(model, workers=workers)
    logits, loss, cache = dp.forward(idx, targets)
    assert len(cache["shards"]) == min(workers, 4)
    grads = dp.backward(cache, dloss=0.7)
    np.testing.assert_allclose(logits, logits1, rtol=0, atol=1e-14)
    np.testing.assert_allclose(loss, loss1, rtol=1e-14)
    assert list(grads) == list(grads1)
    for g in (grads, grads1):  # one flat buffer laid out like the params: the optimizer's one-pass path
        assert flat_span([g[n] for n in sorted(g, key=lambda n: g[n].ndim < 2)]) is not None
    for name in grads:
        np.testing.assert_allclose(grads[name], grads1[name], rtol=1e-12, atol=1e-14, err_msg=name)


def train(workers, dtype, steps=4, dropout=DROPPY.dropout):
    """Losses, the first step's gradients and the final parameters of a few AdamW steps at dropout 0.1 on shards
    (workers=None: the model alone)."""
    cfg = GPTConfig(**{**DROPPY.to_dict(), "dropout": dropout})
    model = GPT(cfg, seed=1, dtype=dtype, backend="numpy")
    runner = model if workers is None else DataParallel(model, workers=workers)
    opt = AdamW(decay_groups(model.params, 0.1), lr=1e-2)
    rng = np.random.default_rng(0)
    losses, first_grads = [], None
    for _ in range(steps):
        idx, targets = rng.integers(0, cfg.vocab_size, (2, 6, cfg.block_size))
        targets[0, :3] = -1
        _, loss, cache = runner.forward(idx, targets)
        grads = runner.backward(cache)
        first_grads = first_grads or {name: g.copy() for name, g in grads.items()}
        clip_grad_norm(grads, 1.0)
        opt.step(grads)
        losses.append(float(loss))
    return np.array(losses), first_grads, model.state_dict()


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 1e-5)])
def test_dropout_does_not_depend_on_the_number_of_workers(dtype, rtol):
    """Each row draws its masks from its own generator (seeded by the step's seed and the row): 1, 2 and 3
    workers give the model's own losses and gradients up to the order of float sums (the parameters after
    AdamW steps too in float64; in float32 Adam's normalised step magnifies last-bit differences of tiny
    gradients)."""
    alone_losses, alone_grads, alone = train(None, dtype)
    for workers in (1, 2, 3):
        losses, grads, params = train(workers, dtype)
        if workers == 1:  # one shard is the model's own pass, bit for bit
            np.testing.assert_array_equal(losses, alone_losses)
        np.testing.assert_allclose(losses, alone_losses, rtol=rtol, err_msg=f"{workers} workers")
        for name, g in grads.items():
            assert np.max(np.abs(g - alone_grads[name])) <= rtol * np.max(np.abs(alone_grads[name])), name
        for name, value in params.items() if dtype == "float64" else ():
            assert np.max(np.abs(value - alone[name])) <= rtol * np.max(np.abs(alone[name])), (workers, name)
    no_dropout, _, _ = train(2, dtype, dropout=0.0)
    assert not np.allclose(no_dropout, alone_losses, rtol=1e-3)  # dropout really acted


def test_runs_are_the_same_bits_for_a_given_number_of_workers():
    first_losses, _, first = train(3, "float32")
    again_losses, _, again = train(3, "float32")
    np.testing.assert_array_equal(first_losses, again_losses)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)


def test_gradcheck_through_the_shards_with_dropout():
    cfg = GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8, dropout=0.3)
    model = perturbed_model(cfg)
    report = model_gradcheck(model, *batch(cfg, B=3), mode="directional", dropout_seed=5,
                             runner=DataParallel(model, workers=2))
    assert report.ok and report.max_rel_err <= 1e-7


@pytest.mark.parametrize("workers, T", [(2, 16), (3, 16), (2, 150)])
def test_activation_bytes_in_shards(workers, T):
    """The model's budget (docs/gpt_backward.md), with the positions once per shard."""
    cfg = GPTConfig(vocab_size=65, block_size=T, n_layer=3, n_head=2, n_embd=16)
    dp = DataParallel(GPT(cfg, backend="numpy"), workers=workers)
    B, L, C, H, V = 4, 3, 16, 2, 65
    cache = dp.forward(*batch(cfg, B=B, T=T))[2]
    floats = B * T * (L * (20 * C + 2) + 2 * C + 2 + V) + L * B * H * attention_weights_kept(T, ATTN_BLOCK)
    ints = 8 * B * T * 2 + B * T + 8 * T * workers  # idx, targets (int64), the kept mask (bool), positions
    assert dp.activation_bytes(cache) == 4 * floats + ints


def test_a_changed_dropout_rate_reaches_every_shard():
    """The trainer may change the model's config between steps: every shard reads the rate of the moment."""
    model = GPT(DROPPY, seed=2, dtype="float64", backend="numpy")
    dp = DataParallel(model, workers=2)
    idx, targets = np.random.default_rng(0).integers(0, DROPPY.vocab_size, (2, 4, DROPPY.block_size))
    dp.forward(idx, targets)  # with dropout 0.1
    model.cfg = GPTConfig(**{**DROPPY.to_dict(), "dropout": 0.5})
    model.rng = np.random.default_rng(3)
    got = dp.forward(idx, targets)[1]
    model.rng = np.random.default_rng(3)
    np.testing.assert_allclose(got, model.forward(idx, targets)[1], rtol=1e-13)


def test_what_the_model_runs_alone():
    """One row, incremental decoding (kv_cache) and one worker: the model's own forward, the same bits."""
    model = perturbed_model().eval()
    dp = DataParallel(model, workers=2)
    idx, targets = batch(B=1)
    cache = dp.forward(idx, targets)[2]
    assert "shards" not in cache and set(dp.backward(cache)) == set(model.params)
    idx, _ = batch(B=2)
    got = dp.forward(idx, kv_cache={})[0]
    np.testing.assert_array_equal(got, model.forward(idx, kv_cache={})[0])
    assert dp.eval() is dp and not dp.training and dp.params is model.params


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(workers=0), ValueError, "workers must be a positive int or None; got 0"),
    (dict(workers=True), ValueError, "workers must be a positive int or None; got True"),
    (dict(workers="2"), ValueError, "workers must be a positive int or None; got '2'"),
])
def test_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        DataParallel(perturbed_model(), **kwargs)
    with pytest.raises(TypeError, match="model must have the GPT's row interface"):
        DataParallel(object())


def test_it_stands_in_for_its_model_and_caches_go_back_where_they_came_from():
    from scratchllm.generate import generate_ids

    model = perturbed_model()
    dp = DataParallel(model, workers=2)
    assert (dp.cfg, dp.dtype, dp.backend) == (model.cfg, model.dtype, model.backend)
    np.testing.assert_array_equal(generate_ids(dp, [1, 2, 3], 4, seed=0), generate_ids(model, [1, 2, 3], 4, seed=0))
    assert dp.training  # generate put it back
    cache = dp.forward(*batch(B=4))[2]
    with pytest.raises(ValueError, match="this cache is DataParallel's"):
        model.backward(cache)
    with pytest.raises(TypeError, match="cache must be the dict that forward returned; got NoneType"):
        dp.backward(None)
    with pytest.raises(ValueError, match=r"idx must have shape \(B, T\) with B, T >= 1; got \(0, 5\)"):
        dp.forward(np.zeros((0, 5), np.int64))


def test_bad_ids_are_reported_before_any_shard_runs():
    dp = DataParallel(perturbed_model(), workers=2)
    idx, targets = batch(B=4)
    idx[3, 0] = 99
    with pytest.raises(ValueError, match=r"idx holds 99, outside \[0, 11\)"):
        dp.forward(idx, targets)
