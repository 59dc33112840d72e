"""Llama: RMSNorm, rotary position embeddings, grouped-query attention and a SwiGLU MLP, no biases, with a
hand-written backward.

The forward keeps one small cache per op and the backward walks them in reverse, as ``gpt.py`` does
(docs/llama_backward.md walks it). Parameter names and shapes are Hugging Face's ``LlamaForCausalLM`` state dict:
linear weights stored (out, in) as ``nn.Linear`` keeps them, so each projection is ``x @ W.T``. With
``tie_word_embeddings`` the head is ``model.embed_tokens.weight`` itself and there is no ``lm_head.weight``
parameter (``state_dict`` still writes one, as Hugging Face's does).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..kernels.dispatch import (attention_blocked_backward, attention_blocked_forward, embedding_backward,
                               embedding_forward, flash_attention_backward, flash_attention_forward, linear_backward,
                               linear_forward)
from ..ops import rmsnorm_backward, rmsnorm_forward, rope_backward, rope_forward, swiglu_backward, swiglu_forward
from .base import ATTENTIONS, ATTN_BLOCK, FLASH_BLOCK, CausalLM


@dataclass
class LlamaConfig:
    """Hugging Face's ``LlamaConfig`` names and defaults (Llama 2 7B's sizes); ``attention`` is ours (as GPT's)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: num_attention_heads (multi-head attention)
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    attention: str = "auto"

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"LlamaConfig.{name} must be a positive int; got {value!r}")
        H, Hk, C = self.num_attention_heads, self.num_key_value_heads, self.hidden_size
        if C % H or (C // H) % 2:
            raise ValueError(f"LlamaConfig.hidden_size ({C}) must be num_attention_heads ({H}) times an even head "
                             "dimension (rotary embeddings turn pairs of coordinates)")
        if H % Hk:
            raise ValueError(f"LlamaConfig.num_key_value_heads ({Hk}) must divide num_attention_heads ({H})")
        for name in ("rms_norm_eps", "rope_theta"):
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) > 0:
                raise ValueError(f"LlamaConfig.{name} must be a positive number; got {getattr(self, name)!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"LlamaConfig.attention must be one of {', '.join(ATTENTIONS)}; got {self.attention!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)


def llama_param_shapes(cfg: LlamaConfig) -> dict:
    """Every parameter's name and shape, in ``LlamaForCausalLM.state_dict()``'s order (no ``lm_head.weight`` when
    the head is tied to the embedding)."""
    V, C, I, D = cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    H, Hk = cfg.num_attention_heads, cfg.num_key_value_heads
    shapes = {"model.embed_tokens.weight": (V, C)}
    for i in range(cfg.num_hidden_layers):
        h = f"model.layers.{i}."
        shapes.update({
            h + "self_attn.q_proj.weight": (H * D, C), h + "self_attn.k_proj.weight": (Hk * D, C),
            h + "self_attn.v_proj.weight": (Hk * D, C), h + "self_attn.o_proj.weight": (C, H * D),
            h + "mlp.gate_proj.weight": (I, C), h + "mlp.up_proj.weight": (I, C), h + "mlp.down_proj.weight": (C, I),
            h + "input_layernorm.weight": (C,), h + "post_attention_layernorm.weight": (C,),
        })
    shapes["model.norm.weight"] = (C,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def llama_init_params(cfg: LlamaConfig, seed: int = 0) -> dict:
    """Hugging Face's initialisation, on the host in float64: N(0, 0.02) for the embedding and every linear weight
    (``initializer_range``), RMSNorm weights one."""
    rng = np.random.default_rng(seed)
    return {name: np.ones(shape) if len(shape) == 1 else rng.normal(0.0, 0.02, shape)
            for name, shape in llama_param_shapes(cfg).items()}


class Llama(CausalLM):
    """A Llama language model with GPT's interface: ``logits, loss, cache = model.forward(idx, targets)``;
    ``grads = model.backward(cache)``; ``forward(idx, kv_cache={})`` for incremental decoding."""

    config_type = LlamaConfig
    context_field = "max_position_embeddings"
    layers_field, heads_field = "num_hidden_layers", "num_attention_heads"

    def param_shapes(self) -> dict:
        return llama_param_shapes(self.cfg)

    def init_params(self, seed: int = 0) -> dict:
        return llama_init_params(self.cfg, seed)

    @property
    def vocab_params(self) -> tuple:
        """The embedding, and the head when it is not tied."""
        return ("model.embed_tokens.weight",) + (() if self.cfg.tie_word_embeddings else ("lm_head.weight",))

    def head_weight(self):
        """The output head, (V, C): ``lm_head.weight``, or the embedding when tied."""
        return self.params["model.embed_tokens.weight" if self.cfg.tie_word_embeddings else "lm_head.weight"]

    def forward_rows(self, idx, seed=None, first_row=0, past=0, kv_cache=None):
        """Logits (B, T, V) and caches for some rows of a batch: embedding, decoder layers, final RMSNorm, head.
        Positions start at ``past`` (the KV cache's length). No dropout (``seed`` is unused: Llama has none)."""
        p, cfg = self.params, self.cfg
        B, T = idx.shape
        positions = self.xp.arange(past, past + T)  # (T,)
        caches = {}
        x, caches["embed_tokens"] = embedding_forward(idx, p["model.embed_tokens.weight"])  # (B, T, C)
        for i in range(cfg.num_hidden_layers):
            x, caches[i] = self._layer(i, x, positions, kv_cache)  # (B, T, C)
        xf, caches["norm"] = rmsnorm_forward(x, p["model.norm.weight"], cfg.rms_norm_eps)  # (B, T, C)
        logits, caches["lm_head"] = linear_forward(xf, self.head_weight().T)  # (B, T, V)
        return logits, caches

    def _layer(self, i, x, positions, kv_cache=None):
        """Decoder layer i: ``x + attn(rmsnorm(x))``, then ``x + mlp(rmsnorm(x))``; returns (x, its caches)."""
        p, cfg, h, c = self.params, self.cfg, f"model.layers.{i}.", {}
        B, T, C = x.shape
        H, Hk, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        # attention sub-block: x = x + o_proj(attn(rope(q), rope(k), v))
        a, c["input_layernorm"] = rmsnorm_forward(x, p[h + "input_layernorm.weight"], cfg.rms_norm_eps)  # (B, T, C)
        q, c["q_proj"] = linear_forward(a, p[h + "self_attn.q_proj.weight"].T)  # (B, T, H*D)
        k, c["k_proj"] = linear_forward(a, p[h + "self_attn.k_proj.weight"].T)  # (B, T, Hk*D)
        v, c["v_proj"] = linear_forward(a, p[h + "self_attn.v_proj.weight"].T)  # (B, T, Hk*D)
        q = q.reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D)
        k = k.reshape(B, T, Hk, D).transpose(0, 2, 1, 3)  # (B, Hk, T, D)
        v = v.reshape(B, T, Hk, D).transpose(0, 2, 1, 3)  # (B, Hk, T, D)
        q, c["rope_q"] = rope_forward(q, positions, cfg.rope_theta)  # (B, H, T, D) turned by position
        k, c["rope_k"] = rope_forward(k, positions, cfg.rope_theta)  # (B, Hk, T, D)
        if kv_cache is not None:  # the cache keeps the Hk key/value heads once each, keys already turned
            if i in kv_cache:
                k = self.xp.concatenate([kv_cache[i][0], k], axis=2)  # (B, Hk, past + T, D)
                v = self.xp.concatenate([kv_cache[i][1], v], axis=2)  # (B, Hk, past + T, D)
            kv_cache[i] = (k, v)
        if self.attention_mode(k.shape[2], 0.0, B)[0] == "flash":  # O(T) memory
            y, c["flash"] = flash_attention_forward(q, k, v, True, FLASH_BLOCK, FLASH_BLOCK)  # (B, H, T, D)
        else:
            y, c["attn"] = attention_blocked_forward(q, k, v, block=ATTN_BLOCK)  # (B, H, T, D) grouped heads
        y = y.transpose(0, 2, 1, 3).reshape(B, T, H * D)  # (B, T, H*D) heads side by side
        y, c["o_proj"] = linear_forward(y, p[h + "self_attn.o_proj.weight"].T)  # (B, T, C)
        self.record(i, "attn_out", y)
        x = x + y  # (B, T, C) residual
        # MLP sub-block: x = x + down_proj(silu(gate_proj(m)) * up_proj(m))
        m, c["post_attention_layernorm"] = rmsnorm_forward(x, p[h + "post_attention_layernorm.weight"],
                                                           cfg.rms_norm_eps)  # (B, T, C)
        g, c["gate_proj"] = linear_forward(m, p[h + "mlp.gate_proj.weight"].T)  # (B, T, I)
        u, c["up_proj"] = linear_forward(m, p[h + "mlp.up_proj.weight"].T)  # (B, T, I)
        self.record(i, "mlp_pre", g)
        s, c["swiglu"] = swiglu_forward(g, u)  # (B, T, I)
        z, c["down_proj"] = linear_forward(s, p[h + "mlp.down_proj.weight"].T)  # (B, T, C)
        x = x + z  # (B, T, C) residual
        self.record(i, "resid", x)
        return x, c

    def backward_rows(self, dlogits, caches, out=None) -> dict:
        """``forward_rows`` in reverse: every parameter's gradient from these rows' dlogits (B, T, V). ``out``: the
        params-shaped arrays (views of a flat buffer) to write the gradients into, as GPT's."""
        grads, into = {}, out or {}
        head = "model.embed_tokens.weight" if self.cfg.tie_word_embeddings else "lm_head.weight"
        dx = self._backward_to_embeddings(dlogits, caches, grads, into)  # (B, T, C)
        dhead = grads.pop("head")  # (C, V) = d(W_head.T)
        _, dembed = embedding_backward(dx, caches["embed_tokens"])  # (V, C)
        if self.cfg.tie_word_embeddings:
            grads[head] = dembed + dhead.T  # (V, C): the tied weight's two uses ADD
        else:
            grads["model.embed_tokens.weight"], grads[head] = dembed, dhead.T
        return self._into(grads, out)

    def _backward_to_embeddings(self, dlogits, caches, grads, into):
        """The walk from dlogits down to the token embeddings (B, T, C), whose gradient it returns; the gradients
        on the way go into ``grads`` (the head's, of ``W_head.T``, as "head")."""
        dxf, grads["head"], _ = linear_backward(dlogits, caches["lm_head"])  # (B, T, C), (C, V)
        dx, grads["model.norm.weight"] = rmsnorm_backward(dxf, caches["norm"])  # (B, T, C)
        for i in reversed(range(self.cfg.num_hidden_layers)):
            dx = self._layer_backward(i, dx, caches[i], grads, into)  # (B, T, C)
        return dx

    def _linear_backward(self, dy, cache, name, grads, into):
        """A projection ``y = x @ W.T`` in reverse: dx returned, dW (out, in) = the (in, out) gradient of W.T,
        written into ``into``'s array through its transposed view where there is one."""
        slot = into.get(name)
        dx, dwt, _ = linear_backward(dy, cache, dw_out=None if slot is None else slot.T)  # dwt (in, out)
        grads[name] = dwt.T if slot is None else slot  # (out, in): W's own layout
        return dx

    def _layer_backward(self, i, dx, c, grads, into):
        """Decoder layer i in reverse: the residual passes dx straight through and adds each branch's dx."""
        cfg, h = self.cfg, f"model.layers.{i}."
        B, T, C = dx.shape
        H, Hk, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        lin = self._linear_backward
        # MLP sub-block in reverse
        ds = lin(dx, c["down_proj"], h + "mlp.down_proj.weight", grads, into)  # (B, T, I)
        dg, du = swiglu_backward(ds, c["swiglu"])  # (B, T, I) each
        dm = lin(dg, c["gate_proj"], h + "mlp.gate_proj.weight", grads, into)  # (B, T, C)
        dm = dm + lin(du, c["up_proj"], h + "mlp.up_proj.weight", grads, into)  # (B, T, C): m feeds both
        dln2, grads[h + "post_attention_layernorm.weight"] = rmsnorm_backward(dm, c["post_attention_layernorm"])
        dx = dx + dln2  # (B, T, C)
        # attention sub-block in reverse
        dy = lin(dx, c["o_proj"], h + "self_attn.o_proj.weight", grads, into)  # (B, T, H*D)
        dy = dy.reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D)
        if "flash" in c:
            dq, dk, dv = flash_attention_backward(dy, c["flash"])  # (B, H, T, D), 2 x (B, Hk, T, D)
        else:
            dq, dk, dv = attention_blocked_backward(dy, c["attn"])  # dk, dv summed over each group's heads
        dq, _ = rope_backward(dq, c["rope_q"])  # (B, H, T, D): the inverse rotation
        dk, _ = rope_backward(dk, c["rope_k"])  # (B, Hk, T, D)
        dq = dq.transpose(0, 2, 1, 3).reshape(B, T, H * D)  # (B, T, H*D)
        dk = dk.transpose(0, 2, 1, 3).reshape(B, T, Hk * D)  # (B, T, Hk*D)
        dv = dv.transpose(0, 2, 1, 3).reshape(B, T, Hk * D)  # (B, T, Hk*D)
        da = lin(dq, c["q_proj"], h + "self_attn.q_proj.weight", grads, into)  # (B, T, C): a feeds q, k and v
        da = da + lin(dk, c["k_proj"], h + "self_attn.k_proj.weight", grads, into)
        da = da + lin(dv, c["v_proj"], h + "self_attn.v_proj.weight", grads, into)
        dln1, grads[h + "input_layernorm.weight"] = rmsnorm_backward(da, c["input_layernorm"])
        return dx + dln1  # (B, T, C)

    # ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Parameters as host NumPy arrays (a copy), keyed as ``LlamaForCausalLM.state_dict()``: with a tied head
        ``lm_head.weight`` is written too (the embedding's copy), so the dict loads into transformers as it is."""
        state = super().state_dict()
        if self.cfg.tie_word_embeddings:
            state["lm_head.weight"] = state["model.embed_tokens.weight"].copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        """``CausalLM.load_state_dict``; with a tied head an ``lm_head.weight`` may come along (transformers'
        state dicts have one) and must equal the embedding."""
        state = dict(state)
        if self.cfg.tie_word_embeddings and "lm_head.weight" in state:
            head = state.pop("lm_head.weight")
            if "model.embed_tokens.weight" in state and not np.array_equal(
                    np.asarray(head), np.asarray(state["model.embed_tokens.weight"])):
                raise ValueError("lm_head.weight differs from model.embed_tokens.weight, but tie_word_embeddings "
                                 "is set: the head is the embedding")
        super().load_state_dict(state)


__all__ = ["Llama", "LlamaConfig", "llama_param_shapes", "llama_init_params"]
