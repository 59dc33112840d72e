"""PyTorch references for ``scratchllm bench`` (imported only when torch is installed).

``TORCH_OPS`` maps a registry op name to a torch function of the same positional inputs; ``TorchGPT`` is the
same GPT-2 in PyTorch eager (nanoGPT's layout, weights (in, out) like GPT-2's Conv1D), named and shaped
exactly like ``scratchllm.model.GPT.params`` so weights load across. Its forward returns the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _sdpa(causal, dropout_p=0.0):
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)


def _sdpa_last_queries(q, k, v):
    """Causal attention of the last T of Tk positions (torch's is_causal aligns the queries to the first)."""
    T, Tk = q.shape[-2], k.shape[-2]
    mask = torch.ones(T, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _rope(theta=10000.0):
    """Hugging Face Llama's rotary embedding (``apply_rotary_pos_emb`` with ``rotate_half``), the angles in float64."""
    def rope(x, positions):
        D = x.shape[-1]
        inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
        ang = positions.to(torch.float64)[..., None] * inv_freq
        emb = torch.cat((ang, ang), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        if cos.ndim == 3:
            cos, sin = cos[:, None], sin[:, None]
        half = D // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
    return rope


def _sdpa_gqa(q, k, v):
    """Causal SDPA with grouped keys and values (torch repeats each key/value head for its group)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


TORCH_OPS = {
    "linear": lambda x, w, b: F.linear(x, w.T, b),  # addmm: the bias added inside the GEMM
    "embedding": lambda idx, table: F.embedding(idx, table),
    "layernorm": lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, 1e-5),
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_erf": lambda x: F.gelu(x, approximate="none"),
    "softmax": lambda x: torch.softmax(x, -1),
    "softmax_axis1": lambda x: torch.softmax(x, 1),
    "attention": _sdpa(True),
    "attention_noncausal": _sdpa(False),
    "attention_blocked": _sdpa(True),
    "attention_dropout": _sdpa(True, 0.2),
    "flash_attention": _sdpa(True),  # torch's SDPA picks its own kernel (flash or memory-efficient where it can)
    "flash_attention_noncausal": _sdpa(False),
    "flash_attention_kv": _sdpa_last_queries,
    "dropout": lambda x: F.dropout(x, 0.25, training=True),
    "cross_entropy": lambda logits, targets: F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             targets.reshape(-1), ignore_index=-1),
    "rmsnorm": lambda x, w: F.rms_norm(x, (x.shape[-1],), w, 1e-6),
    "rope": _rope(),
    "rope_rows": _rope(500000.0),
    "swiglu": lambda gate, up: F.silu(gate) * up,
    "attention_gqa": _sdpa_gqa,
    "attention_blocked_gqa": _sdpa_gqa,
    "flash_attention_mqa": _sdpa_gqa,
}
# Random masks: torch draws its own, so these are compared on time only (same p, same shapes).
TIMING_ONLY = {"dropout", "attention_dropout"}


class TorchGPT(torch.nn.Module):
    """GPT-2 in PyTorch eager from a ``scratchllm`` params dict; ``forward(idx, targets) -> loss``."""

    def __init__(self, params: dict, n_layer: int, n_head: int, device="cpu"):
        super().__init__()
        self.n_layer, self.n_head = n_layer, n_head
        self.p = torch.nn.ParameterDict({k.replace(".", "__"): torch.nn.Parameter(torch.tensor(v, device=device))
                                         for k, v in params.items()})

    def w(self, name):
        return self.p[name.replace(".", "__")]

    def linear(self, x, name):
        """x @ weight + bias as Hugging Face's Conv1D and nanoGPT's nn.Linear compute it: one addmm."""
        return F.linear(x, self.w(name + ".weight").T, self.w(name + ".bias"))

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.w("wte.weight")[idx] + self.w("wpe.weight")[:T]
        C = x.shape[-1]
        for i in range(self.n_layer):
            h = f"h.{i}."
            a = F.layer_norm(x, (C,), self.w(h + "ln_1.weight"), self.w(h + "ln_1.bias"), 1e-5)
            qkv = self.linear(a, h + "attn.c_attn")
            q, k, v = qkv.view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            y = y.transpose(1, 2).reshape(B, T, C)
            x = x + self.linear(y, h + "attn.c_proj")
            m = F.layer_norm(x, (C,), self.w(h + "ln_2.weight"), self.w(h + "ln_2.bias"), 1e-5)
            f = F.gelu(self.linear(m, h + "mlp.c_fc"), approximate="tanh")
            x = x + self.linear(f, h + "mlp.c_proj")
        x = F.layer_norm(x, (C,), self.w("ln_f.weight"), self.w("ln_f.bias"), 1e-5)
        logits = x @ self.w("wte.weight").T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-1)

    def decay_groups(self, weight_decay):
        """nanoGPT's split, like ``scratchllm.optim.decay_groups``: >= 2-D tensors decay, the rest do not."""
        ps = list(self.p.values())
        return [{"params": [p for p in ps if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0}]
