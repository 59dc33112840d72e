"""The same GPT-2 in PyTorch eager (nanoGPT's layout, GPT-2 Conv1D weights (in, out)), for benchmarks.

Parameters are named and shaped exactly like ``scratchllm.model.GPT.params``, so weights load across.
"""


import torch
import torch.nn.functional as F


class TorchGPT(torch.nn.Module):
    def __init__(self, params: dict, n_layer: int, n_head: int):
        super().__init__()
        self.n_layer, self.n_head = n_layer, n_head
        self.p = torch.nn.ParameterDict({k.replace(".", "__"): torch.nn.Parameter(torch.tensor(v))
                                         for k, v in params.items()})

    def w(self, name):
        return self.p[name.replace(".", "__")]

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.w("wte.weight")[idx] + self.w("wpe.weight")[:T]
        C = x.shape[-1]
        for i in range(self.n_layer):
            h = f"h.{i}."
            a = F.layer_norm(x, (C,), self.w(h + "ln_1.weight"), self.w(h + "ln_1.bias"), 1e-5)
            qkv = a @ self.w(h + "attn.c_attn.weight") + self.w(h + "attn.c_attn.bias")
            q, k, v = qkv.view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            y = y.transpose(1, 2).reshape(B, T, C)
            x = x + y @ self.w(h + "attn.c_proj.weight") + self.w(h + "attn.c_proj.bias")
            m = F.layer_norm(x, (C,), self.w(h + "ln_2.weight"), self.w(h + "ln_2.bias"), 1e-5)
            f = F.gelu(m @ self.w(h + "mlp.c_fc.weight") + self.w(h + "mlp.c_fc.bias"), approximate="tanh")
            x = x + f @ self.w(h + "mlp.c_proj.weight") + self.w(h + "mlp.c_proj.bias")
        x = F.layer_norm(x, (C,), self.w("ln_f.weight"), self.w("ln_f.bias"), 1e-5)
        logits = x @ self.w("wte.weight").T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-1)

    def decay_groups(self, weight_decay):
        ps = list(self.p.values())
        return [{"params": [p for p in ps if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0}]


