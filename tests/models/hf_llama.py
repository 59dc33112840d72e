"""Hugging Face's ``LlamaForCausalLM`` as a float64 oracle, and small random configs of it.

Three parts of transformers compute in float32 whatever the model's dtype: ``LlamaRMSNorm`` (it casts the input),
the rotary embedding's angles, and the eager attention's softmax. Compared at 1e-12, those would measure
transformers' float32 rounding, not the math. ``float64_oracle`` (a context manager) has the first two compute in
the model's dtype for its duration, with Hugging Face's formulas, and the models are made with SDPA attention,
which keeps float64. Our ops keep the input's dtype throughout.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
modeling = pytest.importorskip("transformers.models.llama.modeling_llama")


def _rmsnorm_in_dtype(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _rotary_in_dtype(self, x, position_ids):
    D = 2 * self.inv_freq.shape[0]
    theta = self.config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    freqs = position_ids[..., None].to(torch.float64) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


@contextlib.contextmanager
def float64_oracle():
    saved = modeling.LlamaRMSNorm.forward, modeling.LlamaRotaryEmbedding.forward
    modeling.LlamaRMSNorm.forward, modeling.LlamaRotaryEmbedding.forward = _rmsnorm_in_dtype, _rotary_in_dtype
    try:
        yield
    finally:
        modeling.LlamaRMSNorm.forward, modeling.LlamaRotaryEmbedding.forward = saved


def hf_config(V=37, C=16, I=24, L=2, H=4, Hk=2, T=32, tie=False, theta=500.0, eps=1e-6):
    return transformers.LlamaConfig(vocab_size=V, hidden_size=C, intermediate_size=I, num_hidden_layers=L,
                                    num_attention_heads=H, num_key_value_heads=Hk, max_position_embeddings=T,
                                    tie_word_embeddings=tie, rope_theta=theta, rms_norm_eps=eps,
                                    attn_implementation="sdpa")


def hf_model(config, seed=0, dtype=torch.float64):
    """A random ``LlamaForCausalLM``; its RMSNorm weights drawn too (they start at one), so a wrong gain shows."""
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model.eval()


def state_numpy(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def loss_and_grads(model, idx, targets):
    """Hugging Face's logits, the mean cross-entropy over kept targets (ours: targets already shifted) and every
    named parameter's gradient (a tied head's once, as ``named_parameters`` lists it)."""
    model.zero_grad(set_to_none=True)
    logits = model(torch.tensor(idx)).logits
    V = logits.shape[-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.tensor(targets).reshape(-1),
                                             ignore_index=-1)
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
    return logits.detach().numpy(), loss.item(), grads


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-300))
