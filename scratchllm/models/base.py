"""What every language model here shares, whatever its blocks: the parameters in one flat buffer, the checks of
token ids, the loss over the logits, the backward's entry point, activation and state-dict bookkeeping.

A model subclasses ``CausalLM`` and writes its own walk: ``param_shapes()``, ``init_params(seed)``,
``forward_rows(idx, seed, first_row, past, kv_cache) -> (logits, caches)`` and ``backward_rows(dlogits, caches,
out) -> grads`` (``gpt.py``, ``llama.py``). ``forward`` and ``backward`` here wrap them with the loss, so a
model's file holds only its own math; the runners of ``parallel/`` call the same two.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..backend import free_memory, get_xp, resolve_backend, to_numpy, tune_host_allocator, xp_for
from ..kernels.dispatch import cross_entropy_backward, cross_entropy_forward
from ..kernels.flat import buffer_root, empty_flat, flat_order, flatten_params

DTYPES = ("float32", "float64")
# Causal attention runs in query blocks of this many rows (attention_blocked): it skips most of the masked upper
# triangle, with attention_forward's numbers. 64 measured fastest at T = 256 on one core, 10 % over 128.
ATTN_BLOCK = 64
# A config's attention = "auto" (GPTConfig's, LlamaConfig's) takes flash attention (O(T) memory) when the
# whole-matrix weights of a forward would take more than this share of the free memory. Not for speed: on the CPU the whole-matrix path (fused Numba
# softmax) measured faster, one thread (as in a batch shard), B1 H4 D64 float32 forward + backward: 26 against 38 ms
# at T1024, 490-550 against 600-660 at T4096. Flash asks for tiles of FLASH_BLOCK queries x FLASH_BLOCK keys.
FLASH_MEMORY_SHARE = 0.25
FLASH_BLOCK = 128
ATTENTIONS = ("auto", "full", "flash")


class CausalLM:
    """A causal language model: ``logits, loss, cache = model.forward(idx, targets)``; ``grads =
    model.backward(cache)`` (a dict keyed like ``model.params``). Subclasses set ``config_type`` and write their
    walk (module docstring)."""

    config_type = None  # the config dataclass the model takes
    context_field = "block_size"  # the config field that bounds positions (past + T)
    layers_field, heads_field = "n_layer", "n_head"  # the config fields of the layer and query-head counts
    vocab_params = ()  # the names of the parameters with a row per token (the embedding; an untied head)

    def __init__(self, cfg, seed: int = 0, dtype: str = "float32", backend: str = "auto", init: bool = True):
        """``init=False`` skips the random initialisation (parameters start at zero), for callers that load
        weights right away: drawing GPT-2 small's 124 M normals takes seconds."""
        if not isinstance(cfg, self.config_type):
            raise TypeError(f"cfg must be a {self.config_type.__name__}; got {type(cfg).__name__}")
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        self.cfg = cfg
        self.dtype = np.dtype(str(dtype))
        self.backend = resolve_backend(backend)
        self.xp = xp_for(self.backend)
        if self.backend == "numpy":
            tune_host_allocator()  # large temporaries are reused instead of mmapped afresh every step
        if init:
            self._set_params(self.init_params(seed))
        else:
            self._set_params({k: self.xp.zeros(shape, dtype=self.dtype) for k, shape in self.param_shapes().items()})
        self.rng = np.random.default_rng([seed, 1])  # each step's dropout seed (``dropout_seed``)
        self.training = True
        self.trace = None  # a dict: forwards record each layer's activations into it (``record``; inspect/)

    def _set_params(self, arrays: dict) -> None:
        """Make ``arrays`` the parameters, in the model's dtype and on its backend."""
        params = {k: self.xp.asarray(v, dtype=self.dtype) for k, v in arrays.items()}
        # The params live in ONE flat buffer, >= 2-D weights first, and so do the grads: each decay group is one
        # stretch, which the optimizer updates at once (optim/, "Flat fast path").
        self._flat_order = flat_order(params)
        _, views = flatten_params({k: params[k] for k in self._flat_order})
        self.params = {k: views[k] for k in params}

    def resize_token_embeddings(self, new_num_tokens: int) -> None:
        """Give the model ``new_num_tokens`` tokens (transformers' name), in place: the rows of ``vocab_params``
        past the new size are dropped, and each new row is the mean of the old rows, so a new token starts with the
        average embedding and, through the head, the average logit, neither favoured nor ruled out (Hewitt, "Initializing
        New Word Embeddings for Pretrained Language Models", 2021). The parameters get a new buffer: build the
        optimizer after this."""
        if isinstance(new_num_tokens, bool) or not isinstance(new_num_tokens, (int, np.integer)) or new_num_tokens < 1:
            raise ValueError(f"new_num_tokens must be an int >= 1; got {new_num_tokens!r}")
        if not self.vocab_params:
            raise NotImplementedError(f"{type(self).__name__} names no vocab_params: the rows to resize")
        n, arrays = int(new_num_tokens), {k: to_numpy(v) for k, v in self.params.items()}
        for k in self.vocab_params:
            old = arrays[k]
            new_rows = np.repeat(old.mean(axis=0, dtype=np.float64, keepdims=True), max(0, n - len(old)), axis=0)
            arrays[k] = np.concatenate([old[:n], new_rows.astype(old.dtype)])
        self.cfg = dataclasses.replace(self.cfg, vocab_size=n)
        self._set_params(arrays)

    def train(self, mode: bool = True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def num_params(self) -> int:
        """Parameter count; a tied head is counted once (as Hugging Face and nanoGPT do)."""
        return sum(int(p.size) for p in self.params.values())

    @property
    def n_layer(self) -> int:
        return getattr(self.cfg, self.layers_field)

    @property
    def n_head(self) -> int:
        return getattr(self.cfg, self.heads_field)

    @property
    def context(self) -> int:
        """The most positions a sequence may have (GPT's block_size, Llama's max_position_embeddings)."""
        return getattr(self.cfg, self.context_field)

    # ---------------------------------------------------------------------------------------------
    def _check_ids(self, name, a, allow_ignore=False):
        """``a`` as an integer (B, T) array on the model's backend. The id range is checked where that is free:
        on the host, before ids given as NumPy arrays (or lists) are copied to the device. Ids already on the
        device are not read back (that would be a host sync in every training step)."""
        if get_xp(a) is np:
            a = np.asarray(a)
        if not hasattr(a, "dtype") or a.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array of shape (B, T); got {type(a).__name__} "
                            f"{getattr(a, 'dtype', '')}".rstrip())
        if a.ndim != 2 or 0 in a.shape:
            raise ValueError(f"{name} must have shape (B, T) with B, T >= 1; got {tuple(a.shape)}")
        if get_xp(a) is np:
            lo, hi = int(a.min()), int(a.max())
            if hi >= self.cfg.vocab_size or lo < (-1 if allow_ignore else 0):
                bad = hi if hi >= self.cfg.vocab_size else lo
                allowed = f"[0, {self.cfg.vocab_size})" + (" or -1 (ignored)" if allow_ignore else "")
                raise ValueError(f"{name} holds {bad}, outside {allowed}")
        return self.xp.asarray(a)

    def check_inputs(self, idx, targets=None, kv_cache=None):
        """``(idx, targets, past)``: the ids as integer (B, T) arrays on the model's backend, checked against the
        vocabulary and the context, and the number of positions already in ``kv_cache``."""
        idx = self._check_ids("idx", idx)
        T = idx.shape[1]
        past = kv_cache[0][0].shape[2] if kv_cache else 0  # positions already in the KV cache
        if past + T > self.context:
            raise ValueError(f"idx has T={T} positions (after {past} cached) but {self.context_field} is "
                             f"{self.context}")
        if targets is not None:
            if kv_cache is not None:
                raise ValueError("targets cannot be combined with kv_cache (the KV cache is for inference)")
            targets = self._check_ids("targets", targets, allow_ignore=True)
            if targets.shape != idx.shape:
                raise ValueError(f"targets must have idx's shape {tuple(idx.shape)}; got {tuple(targets.shape)}")
        return idx, targets, past

    def dropout_seed(self):
        """This step's dropout seed, one draw from ``self.rng``; None when no dropout acts (eval, or p = 0)."""
        if not self.training or not getattr(self.cfg, "dropout", 0.0):
            return None
        return int(self.rng.integers(2**63))

    def forward(self, idx, targets=None, kv_cache=None):
        """Logits for every position, and the mean cross-entropy when ``targets`` are given.

        Shapes:
            idx int (B, T), targets int (B, T) already shifted (-1 = ignored)
            -> logits (B, T, V), loss () or None, cache (for ``backward``)

        ``kv_cache`` (inference only): a dict, empty at first, that keeps every layer's keys and values. The
        tokens in ``idx`` then continue the cached ones (positions start after them), so generation feeds
        one new token per call instead of the whole context.
        """
        idx, targets, past = self.check_inputs(idx, targets, kv_cache)
        logits, caches = self.forward_rows(idx, self.dropout_seed(), past=past, kv_cache=kv_cache)  # (B, T, V)
        loss = None
        if targets is not None:
            loss, caches["loss"] = cross_entropy_forward(logits, targets, ignore_index=-1)  # ()
        return logits, loss, caches

    def backward(self, cache, dloss=1.0) -> dict:
        """Gradients of the loss with respect to every parameter (the forward's caches in reverse).

        ``dloss`` scales the loss gradient (1.0: the gradient of the mean cross-entropy itself). The gradients
        are views of one flat buffer laid out like the parameters' (the optimizer's flat fast path).
        """
        if not isinstance(cache, dict) or ("lm_head" not in cache and "shards" not in cache):
            raise TypeError(f"cache must be the dict that forward returned; got {type(cache).__name__}")
        if "shards" in cache:
            raise ValueError("this cache is DataParallel's (its forward cut the batch into shards): call its backward")
        if "loss" not in cache:
            raise ValueError("backward needs the cache of a forward called with targets (there is no loss)")
        dlogits, _ = cross_entropy_backward(self.xp.asarray(dloss, dtype=self.dtype), cache["loss"])  # (B, T, V)
        _, grads = empty_flat({name: self.params[name] for name in self._flat_order})  # one buffer like the params
        grads = self.backward_rows(dlogits, cache, out=grads)
        return {name: grads[name] for name in self.params}  # the params' order

    def record(self, layer: int, name: str, a) -> None:
        """With ``self.trace`` a dict, keep ``a`` (an activation of ``layer``) under ``(layer, name)``, one entry per
        forward (a batch's shards each add theirs): ``train --stats`` reads the residual stream, the attention
        output and the MLP pre-activation so. Nothing is kept when ``trace`` is None (always, but at those steps)."""
        if self.trace is not None:
            self.trace.setdefault((layer, name), []).append(a)

    def input_gradient(self, dlogits, caches):
        """The gradient, for these dlogits (B, T, V), with respect to what the first block reads at each position:
        the token embedding (plus GPT's position embedding), (B, T, C). The walk of ``backward_rows`` without the
        embedding tables' scatter-add, which would merge positions holding the same token (inspect's saliency)."""
        return self._backward_to_embeddings(dlogits, caches, {}, {})

    @staticmethod
    def _into(grads, out):
        """``backward_rows``' end: the gradients not already written in place into ``out`` (or ``grads`` when
        there is no ``out``)."""
        if out is None:
            return grads
        for name, dest in out.items():
            if grads[name] is not dest:  # not already written in place
                dest[...] = grads[name]
        return out

    def activation_bytes(self, cache) -> int:
        """Bytes of activation memory a forward's cache holds for the backward.

        Counts each distinct buffer once (views such as q, k, v of one qkv buffer share it) and leaves
        out the parameters, which caches only reference (docs/gpt_backward.md itemizes GPT's).
        """
        params = {id(buffer_root(v)) for v in self.params.values()}
        seen, total, stack = set(), 0, [cache]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, (tuple, list)):
                stack.extend(item)
            elif hasattr(item, "nbytes") and hasattr(item, "shape"):
                root = buffer_root(item)
                if id(root) not in params and id(root) not in seen:
                    seen.add(id(root))
                    total += int(root.nbytes)
        return total

    def attention_mode(self, keys, dropout=0.0, batch=1):
        """``(mode, why)``: "flash" or "full" for attention over ``keys`` keys at this dropout and batch.
        ``cfg.attention`` decides, or with "auto": flash when the whole-matrix weights would take over
        ``FLASH_MEMORY_SHARE`` of the free memory (``whole_matrix_bytes``), never with dropout on the weights (a
        whole-matrix feature); else the whole matrix, as fast or faster where it fits (measured, above)."""
        if self.cfg.attention != "auto":
            return self.cfg.attention, "attention=" + self.cfg.attention
        if dropout:
            return "full", "auto: dropout on the attention weights needs the whole matrix"
        need, free = self.whole_matrix_bytes(batch, keys), free_memory(self.xp)
        if free and need > FLASH_MEMORY_SHARE * free:
            return "flash", (f"auto: the whole-matrix weights ({need / 2**20:,.1f} MiB) would take over "
                             f"{FLASH_MEMORY_SHARE:.0%} of the free memory ({free / 2**20:,.0f} MiB)")
        return "full", f"auto: the whole-matrix weights ({need / 2**20:,.1f} MiB) fit"

    def whole_matrix_bytes(self, B, T) -> int:
        """Bytes the whole-matrix path (``attention_blocked``) keeps for the backward at batch B, T keys: every
        layer's query blocks' weights (flash attention keeps one number per query row instead)."""
        kept = sum((min(i0 + ATTN_BLOCK, T) - i0) * min(i0 + ATTN_BLOCK, T) for i0 in range(0, T, ATTN_BLOCK))
        return self.n_layer * B * self.n_head * kept * np.dtype(self.dtype).itemsize

    # ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Parameters as host NumPy arrays (a copy), keyed as ``params``."""
        return {k: to_numpy(v).copy() for k, v in self.params.items()}

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays into the parameters, checking names and shapes (dtype converted to the model's).

        Values are written INTO the existing arrays, so an optimizer built on ``model.params`` keeps
        updating the live parameters.
        """
        missing = sorted(set(self.params) - set(state))
        unexpected = sorted(set(state) - set(self.params))
        if missing or unexpected:
            raise ValueError(f"state dict does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for k, v in state.items():
            if tuple(v.shape) != tuple(self.params[k].shape):
                raise ValueError(f"{k} must have shape {tuple(self.params[k].shape)}; got {tuple(v.shape)}")
        for k, v in state.items():
            self.params[k][...] = self.xp.asarray(v, dtype=self.dtype)
