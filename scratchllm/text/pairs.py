"""Prompt/response pairs as training data, the loss on the responses only.

A pairs file holds one JSON object per line: ``{"prompt": ..., "response": ...}``, or ``{"messages": [{"role":
"system" | "user" | "assistant", "content": ...}, ...]}``, and optionally ``"split": "train" | "val"``
(``split_examples``). Every example is rendered through one template,

    ### System:\\n{content}\\n          (a system turn, if any)
    ### User:\\n{content}\\n            (the prompt)
    ### Assistant:\\n{content}<end>    (the response; <end>: the tokenizer's end-of-text token, or END_CHAR)

and the examples are packed one after another into a single token stream, with a parallel boolean mask that is
True on the tokens a target may be: the assistant's content and its end token. Training takes windows of the
stream as usual (``data.get_batch`` with the mask), and a target whose token is not a response token becomes -1, which the
cross-entropy ignores: a masked position contributes nothing to the loss or to any gradient (tests/test_pairs.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

END_CHAR = "\x04"  # the end of a response for a character tokenizer (ASCII "end of transmission")
ROLES = ("system", "user", "assistant")


def read_pairs(path) -> list:
    """Each example of a pairs file as a list of ``(role, content)`` turns. A malformed line raises ValueError
    naming the file, its line number and what is missing or wrong."""
    return [turns for turns, _ in _read(path)]


def split_examples(path) -> tuple:
    """``(train, val, how)``: the examples of a pairs file in two lists of turns, and a phrase saying how they were
    split. When a line has ``"split": "train" | "val"``, every line's split says where it goes (``scratchllm data
    docstrings`` writes them, split by module); otherwise the last tenth of the examples is the validation split."""
    examples = _read(path)
    if all(split is None for _, split in examples):
        cut = max(1, len(examples) // 10)
        turns = [t for t, _ in examples]
        return turns[:-cut] or turns, turns[-cut:], "the last tenth for validation"
    train = [t for t, split in examples if split == "train"]
    val = [t for t, split in examples if split == "val"]
    if not train or not val or len(train) + len(val) < len(examples):
        raise ValueError(f"{path}: when a line has \"split\", every line needs one, and both \"train\" and "
                         f"\"val\" need examples; got {len(train)} train, {len(val)} val, "
                         f"{len(examples) - len(train) - len(val)} without")
    return train, val, "split as its lines say"


def _read(path) -> list:
    """``[(turns, split or None), ...]`` (``read_pairs``)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; --format=pairs reads one JSONL file")
    examples = []
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        where = f"{path} line {n}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{where}: not valid UTF-8") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object with 'prompt' and 'response', or 'messages'")
        if "messages" in obj:
            turns = obj["messages"]
            if not isinstance(turns, list) or not turns:
                raise ValueError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
            for t in turns:
                if not isinstance(t, dict) or t.get("role") not in ROLES or not isinstance(t.get("content"), str):
                    raise ValueError(f"{where}: each message needs 'role' (one of {', '.join(ROLES)}) and a string "
                                     f"'content'; got {json.dumps(t)[:80]}")
            if not any(t["role"] == "assistant" for t in turns):
                raise ValueError(f"{where}: 'messages' has no assistant turn (nothing to learn)")
            examples.append((_checked([(t["role"], t["content"]) for t in turns], where), _split(obj, where)))
            continue
        for key in ("prompt", "response"):
            if not isinstance(obj.get(key), str):
                raise ValueError(f"{where}: missing key {key!r}" if key not in obj else
                                 f"{where}: {key!r} must be a string")
        examples.append((_checked([("user", obj["prompt"]), ("assistant", obj["response"])], where), _split(obj, where)))
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


def _split(obj, where):
    split = obj.get("split")
    if split not in (None, "train", "val"):
        raise ValueError(f"{where}: 'split' must be \"train\" or \"val\"; got {json.dumps(split)[:40]}")
    return split


def _checked(turns, where) -> list:
    if any(END_CHAR in content for _, content in turns):
        raise ValueError(f"{where}: holds the reserved end character \\x04 (in the template it ends a response)")
    return turns


def render(turns, end: str) -> list:
    """The template's text of one example as ``(text, is_response)`` segments (module docstring); ``end`` closes
    each assistant turn and counts as response (so the model learns to stop)."""
    segments = []
    for role, content in turns:
        segments.append((f"### {role.capitalize()}:\n", False))
        segments.append((content + end, True) if role == "assistant" else (content + "\n", False))
        if role == "assistant":
            segments.append(("\n", False))
    return segments


def end_text(tokenizer) -> str:
    """What closes a response for ``tokenizer``: its end-of-text token's text, or END_CHAR."""
    eot = getattr(tokenizer, "eot_id", None)
    return tokenizer.decode([eot]) if eot is not None else END_CHAR


def encode_pairs(examples, tokenizer) -> tuple:
    """``(tokens, mask)``: every example rendered and encoded, packed one after another (int32 and bool arrays of
    one length); ``mask[i]`` is True when token i is response text (or its end token)."""
    end = end_text(tokenizer)
    special = "all" if getattr(tokenizer, "eot_id", None) is not None else None
    tokens, mask = [], []
    for turns in examples:
        for text, is_response in render(turns, end):
            ids = tokenizer.encode(text, allowed_special=special) if special else tokenizer.encode(text)
            tokens.extend(ids)
            mask.extend([is_response] * len(ids))
    return np.asarray(tokens, dtype=np.int32), np.asarray(mask, dtype=bool)
