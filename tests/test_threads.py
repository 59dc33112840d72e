"""kernels/threads.py: the CPU thread helpers behind the ops' pieces of work and data parallel's shards."""

import os
import threading
import time

import numpy as np
import pytest

from scratchllm.kernels import threads
from scratchllm.kernels import switched_on
from scratchllm.kernels.dispatch import dispatched
from scratchllm.ops import OPS
from scratchllm.kernels.threads import cpu_threads, parallel_map, shard_bounds


def test_parallel_map_keeps_the_items_order_and_uses_threads():
    def work(i):
        time.sleep(0.02 * (3 - i))  # later items finish first
        return i, threading.get_ident()

    out = parallel_map(work, range(3))
    assert [i for i, _ in out] == [0, 1, 2]
    assert out[0][1] == threading.get_ident()  # the first item runs on the caller's thread
    assert len({t for _, t in out}) == 3


def test_parallel_map_holds_blas_to_one_thread_and_gives_it_back():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))  # site-packages: numpy/ and numpy.libs/

    def numpy_blas_threads(_=None):  # the BLAS that numpy's wheel ships (scipy's, also loaded, is not ours)
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
                and os.path.basename(os.path.dirname(i["filepath"])) == "numpy.libs"
                and i["filepath"].startswith(numpy_dir)]

    before = numpy_blas_threads()
    if not before:
        pytest.skip("numpy's BLAS is not the one its wheel ships")
    np.ones((64, 64)) @ np.ones((64, 64))
    inside = parallel_map(numpy_blas_threads, range(2))
    assert inside == [[1], [1]]
    assert numpy_blas_threads() == before


def test_parallel_map_raises_after_every_thread_finished():
    done = []

    def work(i):
        if i == 0:
            raise ValueError("item 0 failed")
        time.sleep(0.05)
        done.append(i)
        return i

    with pytest.raises(ValueError, match="item 0 failed"):
        parallel_map(work, range(3))
    assert sorted(done) == [1, 2]
    with pytest.raises(KeyError):
        parallel_map(lambda i: {}[i], [5, 6])


def test_nested_parallel_map_runs_in_line():
    outer = parallel_map(lambda i: parallel_map(lambda j: (i, j, threading.get_ident()), range(2)), range(2))
    for inner in outer:
        assert inner[0][2] == inner[1][2]  # the inner items shared their outer item's thread


@pytest.mark.parametrize("n, shards", [(1, 4), (4, 2), (5, 2), (7, 3), (3, 3), (10, 1)])
def test_shard_bounds_cover_the_rows_once_in_order(n, shards):
    bounds = shard_bounds(n, shards)
    rows = np.concatenate([np.arange(n)[b] for b in bounds])
    np.testing.assert_array_equal(rows, np.arange(n))
    sizes = [b.stop - b.start for b in bounds]
    assert len(bounds) == min(n, shards) and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_cpu_threads_reads_the_environment(monkeypatch):
    monkeypatch.setenv("SCRATCHLLM_THREADS", "3")
    assert cpu_threads() == 3
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv("SCRATCHLLM_THREADS", bad)
        with pytest.raises(ValueError, match="SCRATCHLLM_THREADS must be a positive integer"):
            cpu_threads()
    monkeypatch.delenv("SCRATCHLLM_THREADS")
    assert cpu_threads() >= 1


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_cut_into_pieces_on_threads_gives_the_one_piece_numbers(monkeypatch, name):
    """Ops cut large arrays into pieces that run on every CPU thread (threads.parallel_chunks). Forcing
    pieces of a single row on 3 threads must give the one-piece outputs and gradients (to rounding: sums
    over rows, such as layernorm's dw, are added piece by piece)."""
    op = OPS[name]
    forward, backward = dispatched(op.forward), dispatched(op.backward)  # the fast paths, as the model runs them
    inputs = op.make_inputs(dtype="float64", seed=3)
    out, cache = forward(*inputs)
    dout = np.random.default_rng(4).standard_normal(np.shape(out))
    grads = backward(dout, cache)
    calls = []
    real = threads.parallel_map
    monkeypatch.setattr(threads, "parallel_map", lambda fn, items: calls.append(1) or real(fn, items))
    monkeypatch.setattr(threads, "PIECE", 1)
    monkeypatch.setattr(threads, "KERNEL_PIECE", 1)
    monkeypatch.setattr(threads, "PARALLEL_MIN", 1)
    monkeypatch.setattr(threads, "KERNEL_PARALLEL_MIN", 1)
    monkeypatch.setenv("SCRATCHLLM_THREADS", "3")
    out2, cache2 = forward(*inputs)
    grads2 = backward(dout, cache2)
    np.testing.assert_allclose(out2, out, rtol=1e-13, atol=1e-15)
    for g, g2 in zip(grads, grads2):
        if g is None:
            assert g2 is None
        else:
            np.testing.assert_allclose(g2, g, rtol=1e-12, atol=1e-14)
    if name in CUT_OPS and switched_on():  # SCRATCHLLM_KERNELS=0: the textbook, in one piece
        assert calls, f"{name} never ran on threads"


CUT_OPS = {"gelu", "gelu_erf", "layernorm", "softmax", "softmax_axis1", "attention", "attention_noncausal",
           "attention_blocked"}
