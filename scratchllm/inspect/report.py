"""``scratchllm inspect``'s files: for a prompt, ``inspect.json`` (the tokens, each next token's loss, the saliency
of each token for the chosen target, every layer's and head's attention weights), ``attention.png`` (a grid of heat
maps, a layer per row and a head per column, the tokens on the axes) and ``saliency.png`` (the prompt's tokens
shaded by their saliency, with the per-position losses beneath). The pictures need matplotlib (the ``plot``
extra); the JSON is written without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import attention_maps, next_token_losses, saliency


def _label(token: str) -> str:
    """A token as an axis label: newline and tab shown escaped, an empty piece as ''."""
    return token.replace("\n", "\\n").replace("\t", "\\t") or "''"


def write_report(model, tokenizer, prompt: str, out_dir, target=None) -> list:
    """Write the three files for ``prompt`` into ``out_dir``; returns their paths (the PNGs only with matplotlib).
    ``target``: the text of one token (its saliency), None: the model's most likely next token."""
    ids = np.asarray(tokenizer.encode(prompt), dtype=np.int64)
    if len(ids) < 2:
        raise ValueError(f"--prompt must encode to at least 2 tokens; {prompt!r} gives {len(ids)}")
    if len(ids) > model.context:
        raise ValueError(f"--prompt has {len(ids)} tokens but the model's context is {model.context}")
    target_id = None
    if target is not None:
        encoded = tokenizer.encode(target)
        if len(encoded) != 1:
            raise ValueError(f"--target must be one token; {target!r} encodes to {len(encoded)}")
        target_id = encoded[0]
    maps, losses, sal = attention_maps(model, ids), next_token_losses(model, ids), saliency(model, ids, target_id)
    tokens = [tokenizer.decode([int(i)]) for i in ids]  # as they are: "".join gives the prompt back
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out={out_dir} is a file; name a directory")
    out.mkdir(parents=True, exist_ok=True)
    report = {"prompt": prompt, "tokens": tokens, "ids": ids.tolist(),
              "next_token_loss": losses.tolist(),  # position t: -log p(token t+1 | tokens 0..t)
              "target": {"id": sal["target"], "text": tokenizer.decode([sal["target"]]), "logprob": sal["logprob"]},
              "saliency": sal["saliency"].tolist(),  # per token: |d log p(target) / d its input embedding|
              "attention": [m.tolist() for m in maps]}  # [layer][head][query][key]
    paths = [out / "inspect.json"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    L, H, labels = len(maps), maps[0].shape[0], [_label(t) for t in tokens]
    fig, axes = plt.subplots(L, H, figsize=(2.2 * H + 1, 2.2 * L + 1), squeeze=False)
    for layer, m in enumerate(maps):
        for head in range(H):
            ax = axes[layer][head]
            ax.imshow(m[head], cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ticks = range(len(tokens)) if len(tokens) <= 32 else []
            ax.set_xticks(list(ticks), [labels[i] for i in ticks], rotation=90, fontsize=6)
            ax.set_yticks(list(ticks), [labels[i] for i in ticks], fontsize=6)
    fig.tight_layout()
    paths.append(out / "attention.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(tokens)), 3.6))
    s = sal["saliency"] / max(float(sal["saliency"].max()), 1e-30)
    top.imshow(s[None, :], cmap="Reds", vmin=0, vmax=1, aspect="auto")
    top.set_xticks(range(len(tokens)), labels, fontsize=7)
    top.set_yticks([])
    top.set_title(f"saliency for the next token {tokenizer.decode([sal['target']])!r} "
                  f"(log p = {sal['logprob']:.2f})", fontsize=9)
    bottom.bar(np.arange(1, len(tokens)), losses, width=0.8)  # under the token it predicts
    bottom.set_xlim(-0.5, len(tokens) - 0.5)
    bottom.set_xticks(range(len(tokens)), labels, fontsize=7)
    bottom.set_ylabel("loss of this token", fontsize=8)
    fig.tight_layout()
    paths.append(out / "saliency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
