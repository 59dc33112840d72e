"""Measuring a model fine-tuned on prompt/response pairs: the loss on the response tokens of a whole split, the
replies to held-out prompts, and their ROUGE-L against the references (``benchmarks/docstrings_task.py``).

``train`` reports the response loss on random windows (``estimate_loss``), cheap enough to run every
``eval_interval``; ``response_loss`` here scores every response token of a split exactly once, the same number
run to run, for a before/after comparison.
"""

from __future__ import annotations

import numpy as np

from .backend import to_numpy
from .chat import conversation_ids, stop_ids


ROWS_TOKENS = 4096  # a forward's batch: this many tokens (32 windows of 128, 4 of GPT-2's 1024)


def response_loss(model, tokens, mask, block_size: int, stride: int | None = None, batch: int | None = None) -> float:
    """Mean cross-entropy (nats) over every response token of a packed split (``pairs.encode_pairs``'s ``tokens``
    and ``mask``), in eval mode.

    Windows of ``block_size`` tokens advance by ``stride`` (default half a window); a window scores only the
    targets no earlier window scored, so after the first window each token is predicted with at least
    ``block_size - stride + 1`` tokens before it (Hugging Face's strided perplexity). The last window ends at the
    split's end.
    """
    tokens, mask = np.asarray(tokens), np.asarray(mask, dtype=bool)
    if tokens.ndim != 1 or mask.shape != tokens.shape:
        raise ValueError(f"tokens and mask must be 1-D of one length; got {tokens.shape} and {mask.shape}")
    if not 1 <= block_size <= model.context:
        raise ValueError(f"block_size must be in [1, the model's context {model.context}]; got {block_size}")
    stride = max(1, block_size // 2) if stride is None else stride
    batch = max(1, ROWS_TOKENS // block_size) if batch is None else batch
    if not 1 <= stride <= block_size or batch < 1:
        raise ValueError(f"stride must be in [1, block_size={block_size}] and batch >= 1; got {stride} and {batch}")
    n = len(tokens) - 1  # targets 1..n
    windows, scored = [], 0
    for start in range(0, max(n - block_size, 0) + stride, stride):
        start = min(start, max(n - block_size, 0))
        end = min(start + block_size, n)
        y = tokens[start + 1:end + 1].astype(np.int64)
        keep = mask[start + 1:end + 1] & (np.arange(start + 1, end + 1) > scored)
        windows.append((tokens[start:end], np.where(keep, y, -1)))
        scored = end
        if end == n:
            break
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(windows), batch):
            group = windows[i:i + batch]
            for T in sorted({len(x) for x, _ in group}):  # one length, unless the split is shorter than a window
                xs = np.stack([x for x, _ in group if len(x) == T])
                ys = np.stack([y for x, y in group if len(x) == T])
                k = int((ys >= 0).sum())
                if k:
                    _, loss, _ = model.forward(model.xp.asarray(xs), model.xp.asarray(ys))
                    total += float(loss) * k
                    count += k
    finally:
        model.train(was_training)
    if not count:
        raise ValueError("the split holds no response token to score")
    return total / count


def replies(model, tokenizer, prompts, max_new_tokens: int = 100, batch: int | None = None) -> list:
    """The greedy reply to each prompt, a one-turn conversation in the pairs template: what ``chat.reply(p,
    max_new_tokens, temperature=0, room=1)`` writes for each alone (the prompt's last tokens fill the context, the
    window slides as the reply grows; equal up to float near-ties, as that one runs a KV cache), computed for many
    prompts at once. Each step runs the last ``context`` tokens of every unfinished reply, ``batch`` at a time among
    those of one length (no KV cache: fast for a small model's short context, slow for GPT-2's), and appends each
    one's most likely token; an end token finishes a reply."""
    stop = stop_ids(tokenizer)
    if not stop:
        raise ValueError("this tokenizer has no end token (<|endoftext|> or \\x04): replies come from a model "
                         "fine-tuned with --format=pairs")
    seqs = [conversation_ids(tokenizer, [("user", p)], model.context, 1) for p in prompts]
    batch = max(1, ROWS_TOKENS // model.context) if batch is None else batch
    outs, active = [[] for _ in seqs], list(range(len(seqs)))
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            by_length = {}
            for i in active:
                by_length.setdefault(min(len(seqs[i]), model.context), []).append(i)
            for L, rows in by_length.items():
                for c in range(0, len(rows), batch):
                    chunk = rows[c:c + batch]
                    logits, _, _ = model.forward(model.xp.asarray(np.array([seqs[i][-L:] for i in chunk])))
                    for i, t in zip(chunk, to_numpy(logits[:, -1]).argmax(axis=-1).tolist()):
                        if t in stop:
                            active.remove(i)
                        else:
                            seqs[i].append(t)
                            outs[i].append(t)
            if not active:
                break
    finally:
        model.train(was_training)
    return [tokenizer.decode(o) for o in outs]


def rouge_l(predictions, references) -> float:
    """Mean ROUGE-L F1 of ``predictions`` against ``references`` (Google's ``rouge-score``, stemmed), 0 to 1."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ImportError("ROUGE-L needs the rouge-score package: pip install 'scratchllm[eval]'") from None
    if len(predictions) != len(references) or not references:
        raise ValueError(f"predictions and references must be non-empty and of one length; got "
                         f"{len(predictions)} and {len(references)}")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return float(np.mean(scores))
