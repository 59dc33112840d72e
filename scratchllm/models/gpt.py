"""GPT: a GPT-2-style Transformer composed explicitly from the ops, with a hand-written backward.

The forward keeps one small cache per op; the backward walks those caches in reverse (llm.c's
``gpt2_backward`` is the model), so it reads as the forward told backwards. Parameter names and shapes are
Hugging Face GPT-2's ``transformer.`` state dict without the prefix; weights are stored (in, out) like
GPT-2's Conv1D, and the output head is tied to ``wte.weight``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..backend import free_memory, get_xp, resolve_backend, to_numpy, tune_host_allocator, xp_for
from ..kernels.flat import buffer_root, empty_flat, flat_order, flatten_params
from ..kernels.dispatch import (attention_blocked_backward, attention_blocked_forward, cross_entropy_backward,
                               cross_entropy_forward, embedding_backward, embedding_forward,
                               flash_attention_backward, flash_attention_forward, gelu_backward, gelu_forward,
                               layernorm_backward, layernorm_forward, linear_backward, linear_forward)
from ..ops import dropout_backward, dropout_forward

DTYPES = ("float32", "float64")
# Causal attention runs in query blocks of this many rows (attention_blocked): it skips most of the masked upper
# triangle, with attention_forward's numbers. 64 measured fastest at T = 256 on one core, 10 % over 128.
ATTN_BLOCK = 64
# GPTConfig.attention = "auto" takes flash attention (O(T) memory) when the whole-matrix weights of a forward would
# take more than this share of the free memory. Not for speed: on the CPU the whole-matrix path (fused Numba
# softmax) measured faster, one thread (as in a batch shard), B1 H4 D64 float32 forward + backward: 26 against 38 ms
# at T1024, 490-550 against 600-660 at T4096. Flash asks for tiles of FLASH_BLOCK queries x FLASH_BLOCK keys.
FLASH_MEMORY_SHARE = 0.25
FLASH_BLOCK = 128
ATTENTIONS = ("auto", "full", "flash")


@dataclass
class GPTConfig:
    """Model hyper-parameters (nanoGPT's names). GPT-2 small is V50257 T1024 L12 H12 C768."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    attention: str = "auto"  # "full": the weights kept (attention_blocked); "flash": O(T) memory; "auto": see GPT

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int; got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be a float in [0, 1); got {self.dropout!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"GPTConfig.attention must be one of {', '.join(ATTENTIONS)}; got {self.attention!r}")
        if self.attention == "flash" and self.dropout:
            raise ValueError("GPTConfig.attention='flash' has no dropout on the attention weights (a whole-matrix "
                             f"feature): use attention='full' or 'auto' with dropout={self.dropout}, or dropout=0")

    def to_dict(self) -> dict:
        return asdict(self)


def param_shapes(cfg: GPTConfig) -> dict:
    """Every parameter's name and shape, in Hugging Face GPT-2 order."""
    V, T, C = cfg.vocab_size, cfg.block_size, cfg.n_embd
    shapes = {"wte.weight": (V, C), "wpe.weight": (T, C)}
    for i in range(cfg.n_layer):
        h = f"h.{i}."
        shapes.update({
            h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
            h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
            h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (C, 4 * C), h + "mlp.c_fc.bias": (4 * C,),
            h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def init_params(cfg: GPTConfig, seed: int = 0) -> dict:
    """GPT-2 initialisation on the host in float64: N(0, 0.02) for weights and embeddings, residual
    projections (``c_proj``) N(0, 0.02 / sqrt(2 * n_layer)), zero biases, LayerNorm ones/zeros."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            params[name] = np.ones(shape)
        elif name.endswith(".bias"):
            params[name] = np.zeros(shape)
        elif name.endswith("c_proj.weight"):
            params[name] = rng.normal(0.0, 0.02 / math.sqrt(2 * cfg.n_layer), shape)
        else:
            params[name] = rng.normal(0.0, 0.02, shape)
    return params


class GPT:
    """A GPT-2 language model. ``logits, loss, cache = model.forward(idx, targets)``;
    ``grads = model.backward(cache)`` (a dict keyed like ``model.params``)."""

    def __init__(self, cfg: GPTConfig, seed: int = 0, dtype: str = "float32", backend: str = "auto",
                 init: bool = True):
        """``init=False`` skips the random initialisation (parameters start at zero), for callers that load
        weights right away: drawing GPT-2 small's 124 M normals takes seconds."""
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"cfg must be a GPTConfig; got {type(cfg).__name__}")
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        self.cfg = cfg
        self.dtype = np.dtype(str(dtype))
        self.backend = resolve_backend(backend)
        self.xp = xp_for(self.backend)
        if self.backend == "numpy":
            tune_host_allocator()  # large temporaries are reused instead of mmapped afresh every step
        if init:
            self.params = {k: self.xp.asarray(v, dtype=self.dtype) for k, v in init_params(cfg, seed).items()}
        else:
            self.params = {k: self.xp.zeros(shape, dtype=self.dtype) for k, shape in param_shapes(cfg).items()}
        # The params live in ONE flat buffer, >= 2-D weights first, and so do the grads: each decay group is one
        # stretch, which the optimizer updates at once (optim/, "Flat fast path").
        self._flat_order = flat_order(self.params)
        _, views = flatten_params({k: self.params[k] for k in self._flat_order})
        self.params = {k: views[k] for k in self.params}
        self.rng = np.random.default_rng([seed, 1])  # each step's dropout seed (``dropout_seed``)
        self.training = True

    def train(self, mode: bool = True) -> "GPT":
        self.training = bool(mode)
        return self

    def eval(self) -> "GPT":
        return self.train(False)

    def num_params(self) -> int:
        """Parameter count; the tied head is counted once (as Hugging Face and nanoGPT do)."""
        return sum(int(p.size) for p in self.params.values())

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
        if past + T > self.cfg.block_size:
            raise ValueError(f"idx has T={T} positions (after {past} cached) but block_size is {self.cfg.block_size}")
        if targets is not None:
            if kv_cache is not None:
                raise ValueError("targets cannot be combined with kv_cache (the KV cache is for inference)")
            targets = self._check_ids("targets", targets, allow_ignore=True)
            if targets.shape != idx.shape:
                raise ValueError(f"targets must have idx's shape {tuple(idx.shape)}; got {tuple(targets.shape)}")
        return idx, targets, past

    def dropout_seed(self):
        """This step's dropout seed, one draw from ``self.rng``; None when no dropout acts (eval, or p = 0)."""
        if not self.training or not self.cfg.dropout:
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

    def forward_rows(self, idx, seed=None, first_row=0, past=0, kv_cache=None):
        """Logits (B, T, V) and caches for some rows of a batch: embeddings, blocks, final LayerNorm, head.

        Dropout (rate ``cfg.dropout``) acts when ``seed`` is given (``dropout_seed``). Row
        b's masks come from its own generator, ``default_rng([seed, first_row + b])``: a row's masks do not
        depend on which rows share the call, so a batch cut into shards (parallel/, ``first_row`` each shard's
        first row) draws the masks of the whole.
        """
        p, xp = self.params, self.xp
        B, T = idx.shape
        drop = self.cfg.dropout if seed is not None else 0.0
        rng = [np.random.default_rng([seed, first_row + b]) for b in range(B)] if drop else None  # one per row
        caches = {}
        # embeddings: token + position, then dropout
        tok, caches["wte"] = embedding_forward(idx, p["wte.weight"])  # (B, T, C)
        pos, caches["wpe"] = embedding_forward(xp.arange(past, past + T)[None, :], p["wpe.weight"])  # (1, T, C)
        x, caches["drop"] = dropout_forward(tok + pos, drop, rng)  # (B, T, C)
        for i in range(self.cfg.n_layer):
            x, caches[i] = self._block(i, x, drop, kv_cache, rng)  # (B, T, C)
        xf, caches["ln_f"] = layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])  # (B, T, C)
        logits, caches["lm_head"] = linear_forward(xf, p["wte.weight"].T)  # (B, T, V) head tied to wte
        return logits, caches

    def _block(self, i, x, drop, kv_cache=None, rng=None):
        """Transformer block i: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``; returns (x, its caches)."""
        p, h, c = self.params, f"h.{i}.", {}
        B, T, C = x.shape
        H = self.cfg.n_head
        D = C // H
        # attention sub-block: x = x + drop(proj(attn(ln_1(x))))
        a, c["ln_1"] = layernorm_forward(x, p[h + "ln_1.weight"], p[h + "ln_1.bias"])  # (B, T, C)
        qkv, c["c_attn"] = linear_forward(a, p[h + "attn.c_attn.weight"], p[h + "attn.c_attn.bias"])  # (B, T, 3C)
        q, k, v = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)  # 3 x (B, H, T, D) views
        if kv_cache is not None:
            if i in kv_cache:  # the new keys and values follow the cached ones
                k = self.xp.concatenate([kv_cache[i][0], k], axis=2)  # (B, H, past + T, D)
                v = self.xp.concatenate([kv_cache[i][1], v], axis=2)  # (B, H, past + T, D)
            kv_cache[i] = (k, v)
        if self.attention_mode(k.shape[2], drop, B)[0] == "flash":  # O(T) memory, tiles of FLASH_BLOCK
            y, c["flash"] = flash_attention_forward(q, k, v, True, FLASH_BLOCK, FLASH_BLOCK)  # (B, H, T, D)
        else:
            y, c["attn"] = attention_blocked_forward(q, k, v, dropout=drop, rng=rng, block=ATTN_BLOCK)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C) heads side by side
        y, c["attn.c_proj"] = linear_forward(y, p[h + "attn.c_proj.weight"], p[h + "attn.c_proj.bias"])
        y, c["attn.drop"] = dropout_forward(y, drop, rng)  # (B, T, C)
        x = x + y  # (B, T, C) residual
        # MLP sub-block: x = x + drop(proj(gelu(fc(ln_2(x)))))
        m, c["ln_2"] = layernorm_forward(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"])  # (B, T, C)
        f, c["c_fc"] = linear_forward(m, p[h + "mlp.c_fc.weight"], p[h + "mlp.c_fc.bias"])  # (B, T, 4C)
        g, c["gelu"] = gelu_forward(f, approximate="tanh")  # (B, T, 4C)
        z, c["mlp.c_proj"] = linear_forward(g, p[h + "mlp.c_proj.weight"], p[h + "mlp.c_proj.bias"])
        z, c["mlp.drop"] = dropout_forward(z, drop, rng)  # (B, T, C)
        return x + z, c  # (B, T, C) residual

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

    def backward_rows(self, dlogits, caches, out=None) -> dict:
        """``forward_rows`` in reverse: every parameter's gradient from these rows' dlogits (B, T, V).

        ``out``: a dict of arrays shaped like the params (views of a flat buffer) that receives the gradients
        and is returned; the linear layers write their weight gradients (nearly all the numbers) straight into
        it, the rest are copied in at the end. None: a dict of new arrays."""
        grads, into = {}, out or {}
        dxf, dwte_head, _ = linear_backward(dlogits, caches["lm_head"])  # (B, T, C), (C, V)
        dx, grads["ln_f.weight"], grads["ln_f.bias"] = layernorm_backward(dxf, caches["ln_f"])  # (B, T, C)
        for i in reversed(range(self.cfg.n_layer)):
            dx = self._block_backward(i, dx, caches[i], grads, into)  # (B, T, C)
        (demb,) = dropout_backward(dx, caches["drop"])  # (B, T, C)
        _, dwte_tok = embedding_backward(demb, caches["wte"])  # (V, C)
        _, grads["wpe.weight"] = embedding_backward(demb.sum(axis=0, keepdims=True), caches["wpe"])  # (block_size, C)
        grads["wte.weight"] = dwte_tok + dwte_head.T  # (V, C): the tied weight's two uses ADD
        if out is None:
            return grads
        for name, dest in out.items():
            if grads[name] is not dest:  # not already written in place
                dest[...] = grads[name]
        return out

    def _block_backward(self, i, dx, c, grads, into):
        """Block i in reverse: the residual passes dx straight through and adds each branch's dx. The weight
        gradients go into ``into``'s arrays where it has them (``backward_rows``)."""
        B, T, C = dx.shape
        H = self.cfg.n_head
        D = C // H
        h = f"h.{i}."
        # MLP sub-block in reverse
        (dz,) = dropout_backward(dx, c["mlp.drop"])  # (B, T, C)
        dg, grads[h + "mlp.c_proj.weight"], grads[h + "mlp.c_proj.bias"] = linear_backward(
            dz, c["mlp.c_proj"], dw_out=into.get(h + "mlp.c_proj.weight"))
        (df,) = gelu_backward(dg, c["gelu"])  # (B, T, 4C)
        dm, grads[h + "mlp.c_fc.weight"], grads[h + "mlp.c_fc.bias"] = linear_backward(
            df, c["c_fc"], dw_out=into.get(h + "mlp.c_fc.weight"))
        dln2, grads[h + "ln_2.weight"], grads[h + "ln_2.bias"] = layernorm_backward(dm, c["ln_2"])
        dx = dx + dln2  # (B, T, C)
        # attention sub-block in reverse
        (dy,) = dropout_backward(dx, c["attn.drop"])  # (B, T, C)
        dy, grads[h + "attn.c_proj.weight"], grads[h + "attn.c_proj.bias"] = linear_backward(
            dy, c["attn.c_proj"], dw_out=into.get(h + "attn.c_proj.weight"))
        dy = dy.reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D)
        dqkv = self.xp.empty((B, T, 3, H, D), dtype=dx.dtype)  # the forward's split of qkv, in reverse:
        dq_dk_dv = tuple(dqkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))  # 3 x (B, H, T, D) views
        if "flash" in c:
            flash_attention_backward(dy, c["flash"], out=dq_dk_dv)
        else:
            attention_blocked_backward(dy, c["attn"], out=dq_dk_dv)
        dqkv = dqkv.reshape(B, T, 3 * C)  # (B, T, 3C) dq, dk, dv written into their thirds (3 x (B, H, T, D) views)
        da, grads[h + "attn.c_attn.weight"], grads[h + "attn.c_attn.bias"] = linear_backward(
            dqkv, c["c_attn"], dw_out=into.get(h + "attn.c_attn.weight"))
        dln1, grads[h + "ln_1.weight"], grads[h + "ln_1.bias"] = layernorm_backward(da, c["ln_1"])
        return dx + dln1  # (B, T, C)

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
        return self.cfg.n_layer * B * self.cfg.n_head * kept * np.dtype(self.dtype).itemsize

    def activation_bytes(self, cache) -> int:
        """Bytes of activation memory a forward's cache holds for the backward.

        Counts each distinct buffer once (views such as q, k, v of one qkv buffer share it) and leaves
        out the parameters, which caches only reference. For GPT at dropout 0 this is, per step,
        ``B*T*(n_layer*(20*C + 2) + 2*C + 2 + V) * itemsize + n_layer*B*H*P(T) * itemsize`` plus the int ids,
        positions and targets; P(T): the weights the query blocks keep (``docs/gpt_backward.md`` itemizes it).
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

    # ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Parameters as host NumPy arrays (a copy), keyed like Hugging Face GPT-2 without 'transformer.'."""
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
