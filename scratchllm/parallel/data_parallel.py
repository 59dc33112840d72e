"""Data parallel on one machine: a batch cut into shards of rows, one shard per CPU core, the model's own forward
and backward on each, the gradients summed.

``DataParallel(model)`` has the model's ``forward(idx, targets) -> (logits, loss, cache)`` and
``backward(cache) -> grads``; the model stays one batch's forward and backward (``forward_rows`` /
``backward_rows`` on some rows of it). Per step:

    logits = concat over shards s of  model.forward_rows(idx[s], seed, first_row=s.start)   # (B, T, V)
    loss   = cross_entropy(logits, targets)            over the whole batch, so each kept target counts once
    dlogits = d loss / d logits                        (B, T, V), then cut back into the shards
    grads  = sum over shards s of  model.backward_rows(dlogits[s], cache_s)        in shard order

The loss and its gradient are taken over the whole batch, so a shard that holds fewer kept targets weighs less,
exactly as in one pass. Dropout: ``seed`` is one draw from the model's generator per step and row b draws its
masks from ``default_rng([seed, b])`` (``GPT.forward_rows``), so the numbers do not depend on the number of
workers beyond the order of the float sums, and are the same bits run to run for a given number.

Shard 0 runs on the caller's thread; shards 1.. run in worker processes forked from the model (Linux: no GIL
between them, ``processes.py``) or in threads (``mode="threads"``, ``SCRATCHLLM_SHARDS=threads``, other systems).
On CuPy, and for incremental decoding (``kv_cache``), the model runs the whole batch itself. docs/parallel.md.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from ..kernels.dispatch import cross_entropy_backward, cross_entropy_forward
from ..kernels.flat import add_into, empty_flat, flat_order, flat_span, flatten_params, is_shared, shared_empty
from ..kernels.threads import cpu_threads, parallel_chunks, parallel_map, shard_bounds
from .proxy import StandsInForModel
from .processes import MODES, RemoteCache, ShardWorkers, default_mode, processes_supported


class DataParallel(StandsInForModel):
    """``model``'s forward and backward on ``workers`` shards of the batch at once (None: one per CPU this
    process may use). ``mode``: ``"processes"`` or ``"threads"``, where shards 1.. run (None:
    ``SCRATCHLLM_SHARDS``, else processes where ``fork`` exists)."""

    def __init__(self, model, workers=None, mode=None):
        for name in ("forward_rows", "backward_rows", "check_inputs", "dropout_seed", "forward", "backward"):
            if not callable(getattr(model, name, None)):
                raise TypeError(f"model must have the GPT's row interface (no {name}); got {type(model).__name__}")
        if workers is None:
            workers = cpu_threads()
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise ValueError(f"workers must be a positive int or None; got {workers!r}")
        mode = default_mode() if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.model = model
        self.workers = int(workers)
        self.mode = mode if mode == "threads" or processes_supported() else "threads"
        self._shared = None  # name -> the shared-memory view the worker processes read (``_shared_params``)
        self._own_copy = False  # whether those views are a copy of ours rather than the model's own buffer
        self._pool = None  # the worker processes, started at the first forward that needs them
        self._lock = threading.Lock()  # one sharded exchange at a time: the sync and the workers' start too

    def close(self) -> None:
        """End the worker processes now (they also end with this object); the next forward starts new ones."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # ---------------------------------------------------------------------------------------------
    def forward(self, idx, targets=None, kv_cache=None):
        """The model's ``forward``, the batch's rows cut into shards (module docstring)."""
        model = self.model
        B = np.shape(idx)[0] if np.ndim(idx) == 2 else 1
        if kv_cache is not None or model.backend != "numpy" or min(self.workers, B) == 1:
            return model.forward(idx, targets, kv_cache)
        idx, targets, _ = model.check_inputs(idx, targets)
        bounds = shard_bounds(B, self.workers)
        seed = model.dropout_seed()  # one per step, whatever the number of shards
        drop = model.cfg.dropout  # sent along: a worker's copy of the model keeps the config it was forked with
        if self.mode == "processes":
            with self._lock:
                outs = self._forward_in_processes(idx, bounds, seed, drop)
        else:
            outs = parallel_map(lambda rows: model.forward_rows(idx[rows], seed, rows.start, dropout=drop), bounds)
        logits = np.concatenate([lg for lg, _ in outs])  # (B, T, V)
        cache = {"shards": [(rows, c) for rows, (_, c) in zip(bounds, outs)]}
        loss = None
        if targets is not None:
            loss, cache["loss"] = cross_entropy_forward(logits, targets, ignore_index=-1)  # () over the whole batch
        return logits, loss, cache

    def backward(self, cache, dloss=1.0) -> dict:
        """The model's ``backward``: each shard's gradients, summed in shard order into one flat buffer laid out
        like the parameters' (the optimizer's flat fast path)."""
        model = self.model
        if not isinstance(cache, dict) or "shards" not in cache:  # the model's own pass (or not a cache: it says so)
            return model.backward(cache, dloss)
        if "loss" not in cache:
            raise ValueError("backward needs the cache of a forward called with targets (there is no loss)")
        dlogits, _ = cross_entropy_backward(np.asarray(dloss, dtype=model.dtype), cache["loss"])  # (B, T, V)
        shards = cache["shards"]
        order = flat_order(model.params)
        if any(isinstance(c, RemoteCache) for _, c in shards[1:]):
            def local():  # shard 0 here, its gradients written into the result's flat buffer
                flat, views = empty_flat({name: model.params[name] for name in order})
                return flat, model.backward_rows(dlogits[shards[0][0]], shards[0][1], out=views)

            with self._lock:
                (flat, grads), worker_flats = shards[1][1].owner.backward(
                    [c for _, c in shards[1:]], [dlogits[rows] for rows, _ in shards[1:]], local)
            for worker_flat in worker_flats:  # each worker's gradients: its shared flat buffer, the same layout
                add_into(flat, worker_flat)  # one pass (the shards' sum, in shard order)
            return {name: grads[name] for name in model.params}
        outs = parallel_map(lambda sc: model.backward_rows(dlogits[sc[0]], sc[1]), shards)
        _, grads = empty_flat({name: model.params[name] for name in order})

        def add(names):  # some parameters' sums over the shards; memory-bound, so on every core
            for name in order[names]:
                np.add(outs[0][name], outs[1][name], out=grads[name])
                for shard_grads in outs[2:]:
                    grads[name] += shard_grads[name]

        parallel_chunks(add, len(order), sum(int(p.size) for p in model.params.values()), np)
        return {name: grads[name] for name in model.params}

    def activation_bytes(self, cache) -> int:
        """Bytes of activations that ``cache`` keeps for the backward (the model's count, summed over shards; a
        worker process counts its own shard's)."""
        if "shards" not in cache:
            return self.model.activation_bytes(cache)
        local = [c for _, c in cache["shards"] if not isinstance(c, RemoteCache)]  # one walk: shared buffers once
        total = self.model.activation_bytes({**{k: v for k, v in cache.items() if k != "shards"}, "shards": local})
        return total + sum(c.activation_bytes() for _, c in cache["shards"] if isinstance(c, RemoteCache))

    # ---------------------------------------------------------------------------------------------
    def _shared_params(self) -> dict:
        """name -> a view of shared memory holding that parameter, what the worker processes read: the model's
        own flat buffer when it is shared memory (GPT's on the host, which the optimizer updates in place),
        else a copy of ours. Once the caller rebinds a parameter to another array, the workers read a copy of
        ours (made then, with new workers: the arrays the model held before are the caller's, never written),
        and every rebound parameter is copied into it before each forward."""
        params = self.model.params
        if self._shared is not None and not self._own_copy and any(
                params[name] is not view for name, view in self._shared.items()):
            self._shared = None  # rebound: from now on a copy of ours
            self.close()  # the workers read the old buffer
        if self._shared is None:
            order = flat_order(params)
            arrays = [params[name] for name in order]
            self._own_copy = not (all(is_shared(a) for a in arrays) and flat_span(arrays) is not None)
            if self._own_copy:
                _, self._shared = flatten_params({name: params[name] for name in order}, alloc=shared_empty)
            else:
                self._shared = {name: params[name] for name in order}
        for name, view in self._shared.items():
            if params[name] is not view:
                view[...] = params[name]
        return self._shared

    def _forward_in_processes(self, idx, bounds, seed, drop):
        """``forward_rows`` of each shard: shard 0 here, shards 1.. in the worker processes (processes.py)."""
        model = self.model
        shared = self._shared_params()
        if self._pool is None or self._pool.closed or self._pool.pid != os.getpid():
            self._pool = ShardWorkers(self, model, shared)
        requests = [(idx[rows], seed, rows.start, drop) for rows in bounds[1:]]
        most = max(rows.stop - rows.start for rows in bounds)
        out0, outs = self._pool.forward(
            requests, lambda: model.forward_rows(idx[bounds[0]], seed, bounds[0].start, dropout=drop),
            logits_bytes=most * idx.shape[1] * model.cfg.vocab_size * model.dtype.itemsize)
        return [out0] + outs  # (logits, cache) per shard; a worker's logits are a view (forward copies them)
