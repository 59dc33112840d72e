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

The shards run in threads, shard 0 on the caller's (``kernels/threads.py``): NumPy's large calls and our Numba
kernels release the GIL, so on the nanoGPT CPU recipe two threads take the step that two forked processes took
(35.3 against 34.2 ms, docs/parallel.md). Beyond one process, ``scratchllm train`` runs MPI ranks (``mpi.py``).
On CuPy, and for incremental decoding (``kv_cache``), the model runs the whole batch itself. docs/parallel.md.
"""

from __future__ import annotations

import numpy as np

from ..kernels.dispatch import cross_entropy_backward, cross_entropy_forward
from ..kernels.flat import add_into, empty_flat, flat_order
from ..kernels.threads import cpu_threads, parallel_map, shard_bounds
from .proxy import StandsInForModel


class DataParallel(StandsInForModel):
    """``model``'s forward and backward on ``workers`` shards of the batch at once, in threads (None: one per
    CPU this process may use)."""

    def __init__(self, model, workers=None):
        for name in ("forward_rows", "backward_rows", "check_inputs", "dropout_seed", "forward", "backward"):
            if not callable(getattr(model, name, None)):
                raise TypeError(f"model must have the GPT's row interface (no {name}); got {type(model).__name__}")
        if workers is None:
            workers = cpu_threads()
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise ValueError(f"workers must be a positive int or None; got {workers!r}")
        self.model = model
        self.workers = int(workers)

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
        outs = parallel_map(lambda rows: model.forward_rows(idx[rows], seed, rows.start), bounds)
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
        like = {name: model.params[name] for name in flat_order(model.params)}

        def shard_backward(shard):  # one shard's gradients, written into a flat buffer of its own
            rows, shard_cache = shard
            flat, views = empty_flat(like)
            model.backward_rows(dlogits[rows], shard_cache, out=views)
            return flat, views

        outs = parallel_map(shard_backward, shards)
        flat, grads = outs[0]
        for shard_flat, _ in outs[1:]:
            add_into(flat, shard_flat)  # the shards' sum in shard order, one pass over the buffer each
        return {name: grads[name] for name in model.params}

    def activation_bytes(self, cache) -> int:
        """Bytes of activations that ``cache`` keeps for the backward (the model's count, summed over shards)."""
        return self.model.activation_bytes(cache)
