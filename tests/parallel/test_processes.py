"""Batch shards in worker processes (scratchllm/parallel/processes.py): the same numbers as threads, live
parameters, errors that surface instead of hanging, and no process or cache left behind."""

import gc

import numpy as np
import pytest

import scratchllm.kernels.flat
import scratchllm.kernels.threads
from scratchllm.parallel import processes
from scratchllm.model import GPT, GPTConfig
from scratchllm.optim import AdamW, clip_grad_norm, decay_groups
from scratchllm.parallel import DataParallel
from scratchllm.parallel.processes import RemoteCache, WorkerExited

pytestmark = pytest.mark.skipif(not processes.processes_supported(), reason="process shards need fork (Linux)")

CFG = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.1)


def data(B=4, T=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, CFG.vocab_size, (B, T)), rng.integers(0, CFG.vocab_size, (B, T))


def train(mode, steps=3, workers=2):
    model = GPT(CFG, seed=1, backend="numpy")
    dp = DataParallel(model, workers=workers, mode=mode)
    opt = AdamW(decay_groups(model.params, 0.1), lr=1e-2)
    losses = []
    for step in range(steps):
        idx, targets = data(seed=step)
        _, loss, cache = dp.forward(idx, targets)
        grads = dp.backward(cache)
        clip_grad_norm(grads, 1.0)
        opt.step(grads)  # in place: the workers must read the new values at the next forward
        losses.append(float(loss))
    return model, losses


@pytest.mark.parametrize("sum_in_pieces", [False, True])
@pytest.mark.parametrize("workers", [2, 3])
def test_training_in_processes_gives_the_bits_of_threads(workers, sum_in_pieces, monkeypatch):
    """Dropout streams, optimizer updates in place and the shard-ordered gradient sum: bit for bit, also with
    the workers' gradients added in pieces on every core (as above flat.SUM_PARALLEL_MIN parameters)."""
    if sum_in_pieces:
        monkeypatch.setattr(scratchllm.kernels.flat, "SUM_PARALLEL_MIN", 1)
        monkeypatch.setattr(scratchllm.kernels.threads, "PARALLEL_MIN", 1)
        monkeypatch.setattr(scratchllm.kernels.threads, "PIECE", 97)
    a, losses_a = train("threads", workers=workers)
    b, losses_b = train("processes", workers=workers)
    assert losses_a == losses_b and losses_a[0] != losses_a[-1]
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)


def test_a_rebound_parameter_reaches_the_workers():
    model = GPT(CFG, seed=1, backend="numpy").eval()
    dp = DataParallel(model, workers=2, mode="processes")
    idx, _ = data()
    before = dp.forward(idx)[0]
    model.params["h.1.mlp.c_fc.bias"] = np.full(4 * CFG.n_embd, 0.3, np.float32)  # a new array, not in place
    after = dp.forward(idx)[0]
    dp_threads = DataParallel(model, workers=2, mode="threads")
    np.testing.assert_array_equal(after, dp_threads.forward(idx)[0])
    assert not np.allclose(before[2:], after[2:])  # rows of the worker's shard changed too


def test_worker_errors_are_raised_and_the_worker_goes_on():
    model = GPT(CFG, backend="numpy")
    dp = DataParallel(model, workers=2, mode="processes")
    idx, targets = data()
    dp.forward(idx, targets)
    worker = dp._pool.workers[0]
    worker.send("no-such-request")
    with pytest.raises(RuntimeError, match="in a shard worker process: ValueError: unknown request"):
        worker.receive()
    _, loss, cache = dp.forward(idx, targets)  # still serving, and in step with its requests
    assert np.isfinite(loss) and set(dp.backward(cache)) == set(model.params)


def test_a_killed_worker_raises_and_the_next_forward_starts_a_new_one():
    model = GPT(CFG, backend="numpy")
    dp = DataParallel(model, workers=2, mode="processes")
    idx, targets = data()
    _, _, cache = dp.forward(idx, targets)
    worker = dp._pool.workers[0]
    worker.process.kill()
    worker.process.join(5)
    with pytest.raises(WorkerExited, match="SCRATCHLLM_SHARDS=threads"):
        dp.backward(cache)
    with pytest.raises(WorkerExited, match="were closed"):  # the other caches of those workers are gone too
        dp.backward(cache)
    _, loss, cache = dp.forward(idx, targets)  # fresh workers
    assert dp._pool.workers[0] is not worker and np.isfinite(loss)
    assert set(dp.backward(cache)) == set(model.params)


def test_dropped_caches_are_freed_in_the_worker_and_workers_end_with_their_data_parallel():
    model = GPT(CFG, backend="numpy")
    dp = DataParallel(model, workers=2, mode="processes")
    idx, targets = data()
    caches = [dp.forward(idx, targets)[2] for _ in range(3)]
    assert isinstance(caches[0]["shards"][1][1], RemoteCache)
    worker = dp._pool.workers[0]
    worker.send("count")
    assert worker.receive() == 3
    del caches
    gc.collect()
    worker.send("count")  # the drops travel with the next request
    assert worker.receive() == 0
    process = worker.process
    del dp, worker
    gc.collect()
    process.join(5)
    assert not process.is_alive()


def test_the_mode_setting_is_checked(monkeypatch):
    model = GPT(CFG, backend="numpy")
    monkeypatch.setenv("SCRATCHLLM_SHARDS", "threads")
    assert DataParallel(model).mode == "threads"
    monkeypatch.setenv("SCRATCHLLM_SHARDS", "fibers")
    with pytest.raises(ValueError, match="SCRATCHLLM_SHARDS must be one of processes, threads; got 'fibers'"):
        DataParallel(model)
    monkeypatch.delenv("SCRATCHLLM_SHARDS")
    with pytest.raises(ValueError, match="mode must be one of processes, threads; got 'cores'"):
        DataParallel(model, mode="cores")


def test_a_process_forked_from_the_model_owner_starts_its_own_workers():
    import multiprocessing

    model = GPT(CFG, backend="numpy").eval()
    dp = DataParallel(model, workers=2, mode="processes")
    idx, _ = data()
    expected = dp.forward(idx)[0]  # this process's workers are up
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    ours = dp._pool.workers[0].process.pid

    def in_child():  # a data loader's fork, say: it must not talk to this process's workers
        logits = dp.forward(idx)[0]
        queue.put((logits, dp._pool.workers[0].process.pid))

    child = ctx.Process(target=in_child)
    child.start()
    got, theirs = queue.get(timeout=60)
    child.join(10)
    np.testing.assert_array_equal(got, expected)
    assert theirs != ours
    np.testing.assert_array_equal(dp.forward(idx)[0], expected)  # ours untouched by the child's


def test_an_interrupted_exchange_leaves_no_reply_behind(monkeypatch):
    """Ctrl-C (or any error) in shard 0 while a worker computes: the workers are closed, so no stale reply
    can answer a later request; the next forward starts fresh ones and gets the right numbers."""
    model = GPT(CFG, backend="numpy").eval()
    dp = DataParallel(model, workers=2, mode="processes")
    idx, _ = data()
    expected = dp.forward(idx)[0]
    first = dp._pool.workers[0]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(GPT, "forward_rows", interrupted)  # in this process only: the worker forked before
        with pytest.raises(KeyboardInterrupt):
            dp.forward(data(seed=5)[0])
    np.testing.assert_array_equal(dp.forward(idx)[0], expected)
    assert dp._pool.workers[0] is not first and not first.process.is_alive()


def test_a_ctrl_c_sent_to_the_workers_is_left_to_the_caller():
    import os
    import signal

    model = GPT(CFG, backend="numpy").eval()
    dp = DataParallel(model, workers=2, mode="processes")
    idx, _ = data()
    expected = dp.forward(idx)[0]
    worker = dp._pool.workers[0]
    os.kill(worker.process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    np.testing.assert_array_equal(dp.forward(idx)[0], expected)
    assert dp._pool.workers[0] is worker and worker.process.is_alive()


def test_workers_end_when_the_model_process_is_killed(tmp_path):
    """kill -9 of the process that owns the model: its workers must not live on (orphans waiting forever)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "owner.py"
    script.write_text(
        "import sys, time, numpy as np\n"
        "from scratchllm.model import GPT, GPTConfig\n"
        "from scratchllm.parallel import DataParallel\n"
        "m = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=16), backend='numpy')\n"
        "dp = DataParallel(m, workers=3, mode='processes')\n"
        "dp.forward(np.zeros((4, 8), np.int64))\n"
        "print(' '.join(str(w.process.pid) for w in dp._pool.workers), flush=True)\n"
        "time.sleep(60)\n")
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in owner.stdout.readline().split()]
    assert len(pids) == 2
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(10)

    def running(pid):  # neither gone nor a zombie
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(running(p) for p in pids):
        time.sleep(0.1)
    alive = [p for p in pids if running(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their model's process"


def test_logits_larger_than_the_shared_buffer_go_through_the_pipe(monkeypatch):
    """The transfer buffer is sized at the first forward; a larger batch later falls back to the pipe."""
    monkeypatch.setattr(processes, "TRANSFER_MIN_BYTES", 0)
    model = GPT(CFG, seed=3, backend="numpy").eval()
    dp = DataParallel(model, workers=2, mode="processes")
    small, _ = data(B=2)
    dp.forward(small)  # the worker's buffer: twice one row's logits
    worker = dp._pool.workers[0]
    assert worker.transfer.size == 2 * CFG.block_size * CFG.vocab_size * 4
    big, targets = data(B=8)  # four rows a shard: through the pipe, both ways
    got = dp.forward(big, targets)
    grads = dp.backward(got[2])
    dp_threads = DataParallel(model, workers=2, mode="threads")
    expected = dp_threads.forward(big, targets)
    np.testing.assert_array_equal(got[0], expected[0])
    for name, g in dp_threads.backward(expected[2]).items():
        np.testing.assert_array_equal(grads[name], g, err_msg=name)
    assert dp._pool.workers[0] is worker
