"""Text generation: incremental decoding with a KV cache, temperature, top-k and top-p (nucleus) sampling."""

from __future__ import annotations

import math

import numpy as np

from .backend import to_numpy


def sample_next(logits, rng: np.random.Generator, temperature: float = 1.0, top_k: int | None = None,
                top_p: float = 1.0) -> np.ndarray:
    """Pick the next token id for each row of ``logits`` (B, V).

    ``temperature == 0`` or ``top_k == 1`` is greedy (argmax). Otherwise the logits are divided by the
    temperature, cut to the ``top_k`` largest, then to the smallest set whose probability reaches ``top_p``
    (the most likely token always stays), and one id is drawn per row from ``rng``. Returns int64 (B,).
    """
    logits = to_numpy(logits).astype(np.float64)  # (B, V) sampling happens on the host
    if temperature == 0 or top_k == 1:
        return logits.argmax(axis=-1)
    logits = logits / temperature
    V = logits.shape[-1]
    if top_k is not None and top_k < V:
        kth = np.partition(logits, V - top_k, axis=-1)[:, V - top_k][:, None]  # (B, 1) the k-th largest
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)  # (B, V)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")  # (B, V) most likely first
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        cum = np.cumsum(sorted_p, axis=-1)
        drop_sorted = cum - sorted_p >= top_p  # mass before this token already reaches top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=-1, keepdims=True)
    u = rng.random((probs.shape[0], 1))  # (B, 1)
    return np.minimum((probs.cumsum(axis=-1) < u).sum(axis=-1), V - 1)  # inverse CDF


def check_sampling(max_new_tokens, temperature=1.0, top_k=None, top_p=1.0) -> None:
    """ValueError naming the first bad sampling argument (``generate_ids``'s, and the CLI's before it starts)."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0; got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0; got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (0 on the command line: no cut); got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1]; got {top_p}")


def generate_ids(model, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=1.0, seed=0, on_token=None,
                 stop=()):
    """Continue the token list ``ids`` by ``max_new_tokens`` tokens, or until a token in ``stop`` is drawn (it is
    not returned); returns the new ids.

    The prompt is cropped to its last ``block_size`` tokens. Each step feeds only the newest token and
    reuses every layer's cached keys and values; when the context would exceed ``block_size`` the window
    slides: the cache is dropped and the last ``block_size`` tokens are recomputed (learned absolute
    positions cannot be shifted inside a cache). ``on_token(id)`` is called after each token (streaming).
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    block = model.context
    context = list(ids)[-block:]
    if not context:
        raise ValueError("the prompt must hold at least one token")
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    try:
        kv = {}
        logits = model.forward(np.asarray([context]), kv_cache=kv)[0][:, -1]  # (1, V)
        new = []
        for _ in range(max_new_tokens):
            token = int(sample_next(logits, rng, temperature, top_k, top_p)[0])
            if token in stop:  # an end token (chat): the reply is over
                break
            new.append(token)
            context.append(token)
            if on_token is not None:
                on_token(token)
            if len(new) == max_new_tokens:
                break
            if len(context) > block:  # slide the window: recompute from the last block_size tokens
                context = context[-block:]
                kv = {}
                logits = model.forward(np.asarray([context]), kv_cache=kv)[0][:, -1]
            else:
                logits = model.forward(np.asarray([[token]]), kv_cache=kv)[0][:, -1]
        return new
    finally:
        model.train(was_training)


def generate_text(model, tokenizer, prompt, max_new_tokens=200, temperature=1.0, top_k=None, top_p=1.0, seed=0,
                  stream=None, allowed_special=None, ids=None, stop=()) -> str:
    """Generate text after ``prompt``; ``stream(text_piece)`` receives the new text as it is produced.

    An empty prompt starts from the tokenizer's end-of-text token when it has one (else its first token).
    Multi-byte characters split across BPE tokens are streamed once complete. ``allowed_special`` (BPE only)
    is passed to ``tokenizer.encode``: ``"all"`` reads ``<|endoftext|>`` in the prompt as the special token, as
    Hugging Face's GPT-2 tokenizer does.
    """
    kwargs = {} if allowed_special is None else {"allowed_special": allowed_special}
    if ids is None:  # ``ids``: the prompt already encoded (chat's cropped conversation)
        ids = tokenizer.encode(prompt, **kwargs) if prompt else []
    if not ids:
        eot = getattr(tokenizer, "eot_id", None)
        ids = [eot if eot is not None else 0]
    new_ids, shown = [], [""]

    def on_token(token):
        new_ids.append(token)
        if stream is not None:
            text = tokenizer.decode(new_ids)
            if not text.endswith("\ufffd") and text.startswith(shown[0]):  # wait for whole characters
                stream(text[len(shown[0]):])
                shown[0] = text

    generate_ids(model, ids, max_new_tokens, temperature, top_k, top_p, seed, on_token, stop)
    text = tokenizer.decode(new_ids)
    if stream is not None and text != shown[0]:
        stream(text[len(shown[0]):] if text.startswith(shown[0]) else text)
    return text
