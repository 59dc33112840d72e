"""Batch shards in worker processes: data parallel's CPU path around Python's GIL.

On the CPU, ``DataParallel`` splits a batch into one shard per core and runs each shard's forward and backward on
its own core (data_parallel.py). In threads, the shards contend for the GIL: every NumPy call gives it up and
takes it back, and at the small arrays of a small model the hand-overs cost more than the arithmetic
(nanoGPT's CPU recipe, forward + backward of B12 on 2 cores: 31 ms in two threads, 24 ms in two processes,
22 ms for one shard alone on one core). So on Linux shards 1, 2, ... run in worker processes forked from
the model, and shard 0 runs in the caller's thread:

- the parameters live in anonymous shared memory from the start (``kernels.flat.shared_empty``: GPT's flat
  buffer), so a worker reads the values the optimizer wrote in place; ``DataParallel`` copies a parameter that
  was rebound to another array into that memory before each sharded forward;
- a worker keeps its shard's caches (the caller holds a ``RemoteCache`` handle; dropping the handle drops
  the cache in the worker at the next request) and writes its shard's gradients into its own shared buffer,
  which the caller adds in shard order, as it adds the threads' gradients: both ways give the same bits;
- token ids travel through a pipe; logits and dlogits through a shared buffer per worker (``pack``/``unpack``;
  at GPT-2's vocabulary a shard's logits are hundreds of MB, which a pipe would take longer to carry than the
  shard takes to compute), sized at twice the first shard's logits (pages are only paid for when touched);
  a larger request falls back to the pipe;
- any interruption of an exchange (Ctrl-C in the caller, an error in shard 0) closes the workers, and the
  next forward forks fresh ones; a worker's own error comes back as ``WorkerError`` and it goes on serving.

``SCRATCHLLM_SHARDS=threads`` (or ``DataParallel(model, mode="threads")``) keeps the shards in threads.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import traceback
import warnings
import weakref

import numpy as np

from ..kernels import threads
from ..kernels.cpu.compile import no_compile_notice
from ..kernels.flat import shared_empty

ENV_VAR = "SCRATCHLLM_SHARDS"
MODES = ("processes", "threads")
TRANSFER_MIN_BYTES = 16 << 20  # a worker's shared buffer for logits and dlogits holds at least this


def processes_supported() -> bool:
    """Process shards need ``fork`` (the worker inherits the model): Linux only (macOS forks unsafely)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def default_mode() -> str:
    """``SCRATCHLLM_SHARDS`` if set, else processes where supported, else threads."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value:
        if value not in MODES:
            raise ValueError(f"{ENV_VAR} must be one of {', '.join(MODES)}; got {value!r}")
        return value if value == "threads" or processes_supported() else "threads"
    return "processes" if processes_supported() else "threads"


class WorkerExited(RuntimeError):
    """A shard worker process is gone (killed, or closed after an interrupted exchange): its caches are lost."""


class WorkerError(RuntimeError):
    """An exception inside a shard worker process, reported back; the worker goes on serving."""


class ShardWorker:
    """One forked process that runs the model's ``forward_rows`` / ``backward_rows`` on the shards sent to it."""

    def __init__(self, model, shared_params: dict, transfer_bytes: int):
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.transfer = shared_empty(transfer_bytes, np.uint8)  # logits out, dlogits in (``pack``)
        self.grads = {}  # name -> view of this worker's shared gradient buffer (the params' layout)
        self.grads_flat = flat = shared_empty(sum(int(v.size) for v in shared_params.values()), model.dtype)
        offset = 0
        for name, v in shared_params.items():
            self.grads[name] = flat[offset:offset + v.size].reshape(v.shape)
            offset += v.size
        self.conn, child_conn = ctx.Pipe()
        self.drops = []  # keys of caches whose handles were garbage-collected: dropped at the next request
        self.seq = 0  # number of the last request; the worker echoes it with the reply
        self.process = ctx.Process(target=_serve, args=(child_conn, self.conn, os.getpid(), model, shared_params,
                                                        self.grads, self.transfer),
                                   daemon=True, name="scratchllm-shard")
        with warnings.catch_warnings():  # Python >= 3.12 warns about fork in a threaded process: the child
            warnings.simplefilter("ignore", DeprecationWarning)  # runs NumPy on its own data only (OpenBLAS
            self.process.start()  # re-creates its threads after fork), never the parent's other threads' work
        child_conn.close()

    def _exited(self, when):
        return WorkerExited(f"a shard worker process has exited (code {self.process.exitcode}) {when}; "
                            f"set SCRATCHLLM_SHARDS=threads to run shards in threads")

    def send(self, kind, *args):
        drops = []
        while self.drops:  # one at a time: a finalizer may append meanwhile
            drops.append(self.drops.pop())
        self.seq += 1
        try:
            self.conn.send((self.seq, kind, drops) + args)
        except (OSError, ValueError) as e:  # broken pipe, or our end already closed
            raise self._exited("before a request") from e

    def receive(self):
        """The reply to the last request (older replies, which an interruption may leave, are skipped)."""
        while True:
            while not self.conn.poll(1.0):  # returns as soon as the reply is there
                if not self.process.is_alive():
                    raise self._exited("during a request")
            try:
                seq, status, payload = self.conn.recv()
            except (EOFError, OSError) as e:  # died while writing its reply
                raise self._exited("during a reply") from e
            if seq == self.seq:
                break
        if status == "error":
            raise WorkerError(f"in a shard worker process: {payload}")
        return payload

    def close(self, kill=False):
        if not kill:
            try:
                self.conn.send((0, "close", []))
            except (OSError, ValueError):
                pass
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


def pack(transfer, a):
    """``a`` for the other side of a pipe: written into the shared ``transfer`` buffer when it fits (the
    message then says only where), else sent whole through the pipe."""
    if a.nbytes <= transfer.size:
        transfer[:a.nbytes].view(a.dtype).reshape(a.shape)[...] = a
        return ("shared", a.shape, a.dtype.str)
    return ("pipe", a)


def unpack(transfer, message):
    """The array ``pack`` sent: a view of ``transfer`` (valid until the next request to that worker) or the
    array itself."""
    if message[0] == "pipe":
        return message[1]
    _, shape, dtype = message
    dtype = np.dtype(dtype)
    return transfer[:int(np.prod(shape, dtype=np.int64)) * dtype.itemsize].view(dtype).reshape(shape)


def receive_all(workers) -> list:
    """Every worker's reply, in order. An error is raised only after every reply is in, so that no reply
    is left in a pipe for the next request to mistake for its own."""
    replies, error = [], None
    for w in workers:
        try:
            replies.append(w.receive())
        except (WorkerError, WorkerExited) as e:
            replies.append(None)
            error = error or e
    if error is not None:
        raise error
    return replies


class RemoteCache:
    """The caller's handle on a shard's cache kept in a worker process."""

    def __init__(self, owner: "ShardWorkers", worker: ShardWorker, key: int):
        self.owner, self.worker, self.key = owner, worker, key
        weakref.finalize(self, worker.drops.append, key)  # list.append: safe at any point a GC runs

    def activation_bytes(self) -> int:
        with self.owner._lock:
            self.worker.send("bytes", self.key)
            return self.worker.receive()


class ShardWorkers:
    """The worker processes of one ``DataParallel`` (``owner``), started on demand (shard j >= 1 runs on worker
    j - 1); they end with the owner."""

    def __init__(self, owner, model, shared_params: dict):
        self._model = weakref.ref(model)
        self._shared = shared_params
        self.workers = []
        self.pid = os.getpid()  # a process forked from this one (a data loader's?) must start its own workers
        self.closed = False
        self._keys = itertools.count()
        self._lock = threading.Lock()  # one exchange at a time (two threads calling forward on one model)
        self._finalizer = weakref.finalize(owner, ShardWorkers._close_all, self.workers, self.pid, False)

    def forward(self, requests, local, logits_bytes):
        """Send ``("forward", idx, seed, first_row, dropout)`` request j to worker j, run ``local()`` (shard 0) here; return
        (local's result, [(logits, RemoteCache)] per worker). A worker's logits are a view of its transfer
        buffer: copy them before its next request. ``logits_bytes``: the largest shard's logits."""
        with self._lock:
            workers = self._ensure(len(requests), logits_bytes)
            keys = [next(self._keys) for _ in workers]
            handles = [RemoteCache(self, w, key) for w, key in zip(workers, keys)]  # dropped again if we fail
            result, replies = self._exchange(workers, [("forward", key) + r for key, r in zip(keys, requests)], local)
            logits = [unpack(w.transfer, reply) for w, reply in zip(workers, replies)]
            return result, list(zip(logits, handles))

    def backward(self, handles, dlogits, local):
        """Send each handle's worker its shard's dlogits, run ``local()`` (shard 0) here; return (local's
        result, each worker's gradients: its shared flat buffer, in the layout of the shared parameters, valid
        until its next backward)."""
        with self._lock:
            if self.closed:
                raise WorkerExited("the shard worker processes that held this forward's caches were closed "
                                   "(an interrupted or failed exchange); run the forward again")
            workers = [h.worker for h in handles]
            requests = [("backward", h.key, pack(h.worker.transfer, d)) for h, d in zip(handles, dlogits)]
            result, _ = self._exchange(workers, requests, local)
            return result, [w.grads_flat for w in workers]

    def _exchange(self, workers, requests, local):
        try:
            for w, request in zip(workers, requests):
                w.send(*request)
            with threads.blas_one_thread(), threads.in_line():  # shard 0 on this core
                result = local()
            return result, receive_all(workers)
        except WorkerError:
            raise  # reported by a worker after its reply: every pipe is in step
        except BaseException:  # Ctrl-C, shard 0 failing, a worker gone: replies may be left in a pipe
            self.close(kill=True)
            raise

    def _ensure(self, n: int, logits_bytes: int) -> list:
        if self.closed:
            raise WorkerExited("the shard workers were closed")
        while len(self.workers) < n:
            transfer = max(2 * logits_bytes, TRANSFER_MIN_BYTES)  # address space: pages cost once written
            self.workers.append(ShardWorker(self._model(), self._shared, transfer))
        return self.workers[:n]

    @staticmethod
    def _close_all(workers, pid, kill):
        if os.getpid() == pid:  # not the workers of the process this one was forked from
            for w in workers:
                w.close(kill=kill)
        workers.clear()

    def close(self, kill=False):
        """End the worker processes (``kill``: at once, without asking); the next forward starts new ones."""
        self.closed = True
        if self._finalizer.detach() is not None:
            ShardWorkers._close_all(self.workers, self.pid, kill)


def _serve(conn, parent_end, parent_pid, model, shared_params, grads, transfer):
    """A worker's loop: one request at a time, in order; every reply is (seq, "ok", result) or (seq, "error",
    text), seq the request's number. It ends on "close", when the pipe closes, or when the parent is gone."""
    parent_end.close()  # the fork copied the parent's end too: holding it, we would never see the pipe close
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the caller decides
    threads._inside.active = True  # ops run in line: this process is one core's shard
    threads._blas().limit(limits=1)  # and BLAS on this core only, for the life of the process
    no_compile_notice()  # the parent says it, once
    model.params = dict(shared_params)  # the shared values, whatever the parent had bound at fork time
    caches = {}
    while True:
        try:
            while not conn.poll(1.0):
                if os.getppid() != parent_pid:  # the parent died (kill -9?) without closing the pipe
                    return
            seq, kind, drops, *args = conn.recv()
        except (EOFError, OSError):
            return
        for key in drops:
            caches.pop(key, None)
        if kind == "close":
            return
        try:
            if kind == "forward":
                key, idx, seed, first_row, dropout = args  # the caller's rate: its model's config may have changed
                logits, caches[key] = model.forward_rows(idx, seed, first_row, dropout=dropout)  # (b, T, V)
                reply = pack(transfer, logits)
            elif kind == "backward":
                key, dlogits = args
                model.backward_rows(unpack(transfer, dlogits), caches[key], out=grads)  # into the shared buffer
                reply = None
            elif kind == "bytes":
                reply = model.activation_bytes(caches[args[0]])
            elif kind == "count":  # caches held (tests)
                reply = len(caches)
            else:
                raise ValueError(f"unknown request {kind!r}")
            conn.send((seq, "ok", reply))
        except Exception as e:  # the caller raises it; the worker goes on serving
            conn.send((seq, "error", "".join(traceback.format_exception_only(type(e), e)).strip()))
