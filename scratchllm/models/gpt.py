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

from ..kernels.dispatch import (attention_blocked_backward, attention_blocked_forward, embedding_backward,
                               embedding_forward, flash_attention_backward, flash_attention_forward, gelu_backward,
                               gelu_forward, layernorm_backward, layernorm_forward, linear_backward, linear_forward)
from ..ops import dropout_backward, dropout_forward
from .base import ATTENTIONS, ATTN_BLOCK, DTYPES, FLASH_BLOCK, FLASH_MEMORY_SHARE, CausalLM  # noqa: F401 (their
#                                                    names in scratchllm.model too)


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


class GPT(CausalLM):
    """A GPT-2 language model. ``logits, loss, cache = model.forward(idx, targets)``;
    ``grads = model.backward(cache)`` (a dict keyed like ``model.params``). The interface and the bookkeeping are
    ``CausalLM``'s (base.py); the walk is here."""

    config_type = GPTConfig
    vocab_params = ("wte.weight",)  # the token embedding, also the head (tied)
    context_field = "block_size"

    def param_shapes(self) -> dict:
        return param_shapes(self.cfg)

    def init_params(self, seed: int = 0) -> dict:
        return init_params(self.cfg, seed)

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
        self.record(i, "attn_out", y)
        y, c["attn.drop"] = dropout_forward(y, drop, rng)  # (B, T, C)
        x = x + y  # (B, T, C) residual
        # MLP sub-block: x = x + drop(proj(gelu(fc(ln_2(x)))))
        m, c["ln_2"] = layernorm_forward(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"])  # (B, T, C)
        f, c["c_fc"] = linear_forward(m, p[h + "mlp.c_fc.weight"], p[h + "mlp.c_fc.bias"])  # (B, T, 4C)
        self.record(i, "mlp_pre", f)
        g, c["gelu"] = gelu_forward(f, approximate="tanh")  # (B, T, 4C)
        z, c["mlp.c_proj"] = linear_forward(g, p[h + "mlp.c_proj.weight"], p[h + "mlp.c_proj.bias"])
        z, c["mlp.drop"] = dropout_forward(z, drop, rng)  # (B, T, C)
        x = x + z  # (B, T, C) residual
        self.record(i, "resid", x)
        return x, c

    def backward_rows(self, dlogits, caches, out=None) -> dict:
        """``forward_rows`` in reverse: every parameter's gradient from these rows' dlogits (B, T, V).

        ``out``: a dict of arrays shaped like the params (views of a flat buffer) that receives the gradients
        and is returned; the linear layers write their weight gradients (nearly all the numbers) straight into
        it, the rest are copied in at the end. None: a dict of new arrays."""
        grads, into = {}, out or {}
        demb = self._backward_to_embeddings(dlogits, caches, grads, into)  # (B, T, C)
        _, dwte_tok = embedding_backward(demb, caches["wte"])  # (V, C)
        _, grads["wpe.weight"] = embedding_backward(demb.sum(axis=0, keepdims=True), caches["wpe"])  # (block_size, C)
        grads["wte.weight"] = dwte_tok + grads.pop("head").T  # (V, C): the tied weight's two uses ADD
        return self._into(grads, out)

    def _backward_to_embeddings(self, dlogits, caches, grads, into):
        """The walk from dlogits down to the embeddings' sum ``tok + pos`` (B, T, C), whose gradient it returns;
        the gradients on the way go into ``grads`` (the head's, of ``wte.T``, as "head")."""
        dxf, grads["head"], _ = linear_backward(dlogits, caches["lm_head"])  # (B, T, C), (C, V)
        dx, grads["ln_f.weight"], grads["ln_f.bias"] = layernorm_backward(dxf, caches["ln_f"])  # (B, T, C)
        for i in reversed(range(self.cfg.n_layer)):
            dx = self._block_backward(i, dx, caches[i], grads, into)  # (B, T, C)
        (demb,) = dropout_backward(dx, caches["drop"])  # (B, T, C)
        return demb

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
