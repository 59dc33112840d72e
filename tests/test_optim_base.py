"""The optimizers' flat fast path (optim/base.py): one update per group when params and grads tile flat buffers."""

import numpy as np
import pytest

from scratchllm import optim
from scratchllm.kernels import threads
from scratchllm.kernels.flat import buffer_root, flat_span
from scratchllm.optim import Adam, decay_groups
from tests.optim_cases import ALL_IDS, ALL_OPTIONS, SHAPES, make_grads, make_params, to_disk_and_back

def flat_copy(arrays, order):
    """The arrays as views of one buffer, laid out in ``order`` (``optim.flatten_params``)."""
    _, views = optim.flatten_params({n: arrays[n] for n in order})
    return {n: views[n] for n in arrays}


FLAT_ORDER = ["w", "t", "b", "s"]  # >= 2-D first: each decay group is one stretch of the buffer


@pytest.mark.parametrize("chunked", [False, True], ids=["one-piece", "chunk-per-thread"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("groups", [None, lambda p: decay_groups(p, 0.1)], ids=["one-group", "decay-groups"])
@pytest.mark.parametrize("cls,kwargs", ALL_OPTIONS, ids=ALL_IDS)
def test_flat_params_and_grads_give_the_same_numbers(monkeypatch, cls, kwargs, groups, dtype, chunked):
    """Views of one buffer take the flat path (one update per group; per-parameter when a grad is missing or
    step counts differ); the numbers, the state dict and a reload are bit for bit the per-parameter loop's.
    ``chunked``: the flat buffers cut into pieces of 5 elements updated on 3 threads, as on a multi-core CPU."""
    if chunked:
        monkeypatch.setattr(threads, "PIECE", 5)
        monkeypatch.setattr(threads, "PARALLEL_MIN", 1)
        monkeypatch.setenv("SCRATCHLLM_THREADS", "3")
    flat_updates = []
    real = cls._update_flat
    monkeypatch.setattr(cls, "_update_flat", lambda self, *a: flat_updates.append(1) or real(self, *a))
    grads = make_grads(25, dtype=dtype)
    ref = make_params(dtype=dtype)
    ref_opt = cls(ref if groups is None else groups(ref), **kwargs)
    flat = flat_copy(make_params(dtype=dtype), FLAT_ORDER)
    opt = cls(flat if groups is None else groups(flat), **kwargs)
    for i, g in enumerate(grads):
        ref_opt.step(g)
        given = {n: a for n, a in g.items() if a is not None}
        opt.step(flat_copy(given, [n for n in FLAT_ORDER if n in given]) if len(given) == len(SHAPES) else g)
        if i == 15:  # a reload mid-run: the state is gathered into fresh flat buffers at the next step
            opt.load_state_dict(to_disk_and_back(opt.state_dict()))
    assert flat_updates, "the flat path was never taken"
    for n in ref:
        np.testing.assert_array_equal(flat[n], ref[n])
    sd, ref_sd = opt.state_dict(), ref_opt.state_dict()
    assert sd["step"] == ref_sd["step"] and set(sd["state"]) == set(ref_sd["state"])
    for key, a in ref_sd["state"].items():
        np.testing.assert_array_equal(sd["state"][key], a)


def test_flat_path_state_arrays_are_views_of_one_buffer():
    params = flat_copy(make_params(), ["w", "t", "b", "s"])
    opt = Adam(params, lr=0.01)
    opt.step(flat_copy({n: np.ones(s) for n, s in SHAPES.items()}, ["w", "t", "b", "s"]))
    roots = {id(buffer_root(opt.state[n]["exp_avg"])) for n in SHAPES}
    assert len(roots) == 1
    assert flat_span([opt.state[n]["exp_avg_sq"] for n in SHAPES]) is not None


def test_flat_span_accepts_exact_tilings_only():
    buf = np.zeros(20)
    a, b, c = buf[0:6].reshape(2, 3), buf[6:10], buf[10:20]
    span, offsets = flat_span([b, a, c])  # any order
    assert span.size == 20 and offsets == [6, 0, 10]
    assert flat_span([a, c]) is None  # a gap
    assert flat_span([a, buf[4:10]]) is None  # an overlap
    assert flat_span([a, np.zeros(4)]) is None  # two buffers
    assert flat_span([buf[0:10:2]]) is None  # not contiguous
    assert flat_span([buf[1:7], buf[7:9]])[1] == [0, 6]  # a stretch inside the buffer
    assert flat_span([]) is None


def test_flatten_params_copies_values_into_views():
    params = make_params()
    flat, views = optim.flatten_params(params, dtype=np.float32)
    assert flat.dtype == np.float32 and flat.size == sum(p.size for p in params.values())
    for n, p in params.items():
        assert views[n].shape == p.shape and np.shares_memory(views[n], flat)
        np.testing.assert_array_equal(views[n], p.astype(np.float32))
