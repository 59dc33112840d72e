"""Prompt/response pairs as training data, the loss on the responses only.

A pairs file holds one JSON object per line: ``{"prompt": ..., "response": ...}``, or ``{"messages": [{"role":
"system" | "user" | "assistant", "content": ...}, ...]}``, and optionally ``"split": "train" | "val"``
(``split_examples``). Every example is rendered through one template,

    ### System:\\n{content}\\n          (a system turn, if any)
    ### User:\\n{content}\\n            (the prompt)
    ### Assistant:\\n{content}<end>\\n  (the response; <end>: the tokenizer's end-of-text token, or END_CHAR)

and the examples are packed one after another into a single token stream, with a parallel boolean mask that is
True on the tokens a target may be: the assistant's content and its end token. Training takes windows of the
stream as usual (``data.get_batch`` with the mask), and a target whose token is not a response token becomes -1, which the
cross-entropy ignores: a masked position contributes nothing to the loss or to any gradient (tests/test_pairs.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

END_CHAR = "\x04"  # the end of a response for a character tokenizer (ASCII "end of transmission")
ROLES = ("system", "user", "assistant")


def read_pairs(path) -> list:
    """Each example of a pairs file as a list of ``(role, content)`` turns. A malformed line raises ValueError
    naming the file, its line number and what is missing or wrong."""
    return [turns for turns, _, _ in _read(path)]


def split_examples(path) -> tuple:
    """``(train, val, how)``: the examples of a pairs file in two lists of turns, and a phrase saying how they were
    split. When a line has ``"split": "train" | "val"``, every line's split says where it goes (``scratchllm data
    docstrings`` writes them, split by module); otherwise the last tenth of the examples is the validation split."""
    examples = _read(path)
    if all(split is None for _, split, _ in examples):
        if len(examples) < 2:
            raise ValueError(f"{path} holds one example; it needs two or more (the last tenth, at least one, is "
                             "held out for validation), or lines with \"split\"")
        cut = max(1, len(examples) // 10)
        turns = [t for t, _, _ in examples]
        return turns[:-cut], turns[-cut:], "the last tenth for validation"
    for _, split, where in examples:
        if split is None:
            raise ValueError(f"{where}: missing key 'split' (other lines have one)")
    train = [t for t, split, _ in examples if split == "train"]
    val = [t for t, split, _ in examples if split == "val"]
    if not train or not val:
        raise ValueError(f"{path}: both splits need examples; its lines say {len(train)} train, {len(val)} val")
    return train, val, "split as its lines say"


def _read(path) -> list:
    """``[(turns, split or None, "FILE line N"), ...]`` (``read_pairs``)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; --format=pairs reads one JSONL file")
    if not path.is_file():
        raise ValueError(f"{path}: no such file (--format=pairs reads one JSONL file)")
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
        if "messages" in obj and ("prompt" in obj or "response" in obj):
            raise ValueError(f"{where}: has both 'messages' and 'prompt'/'response'; a line takes one form")
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
            examples.append((_checked([(t["role"], t["content"]) for t in turns], where), _split(obj, where), where))
            continue
        for key in ("prompt", "response"):
            if not isinstance(obj.get(key), str):
                raise ValueError(f"{where}: missing key {key!r}" if key not in obj else
                                 f"{where}: {key!r} must be a string")
        examples.append((_checked([("user", obj["prompt"]), ("assistant", obj["response"])], where), _split(obj, where),
                         where))
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


def _split(obj, where):
    if "split" not in obj:
        return None
    split = obj["split"]
    if split not in ("train", "val"):
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


def encode_turns(turns, tokenizer) -> tuple:
    """``(ids, mask)`` of one example in the template: each segment encoded as ordinary text (a literal
    ``<|endoftext|>`` in the data stays text, as ``\x04`` is refused), and each response closed by the end: the
    tokenizer's end-of-text id, or END_CHAR's. ``mask`` is True on response tokens and their end."""
    eot = getattr(tokenizer, "eot_id", None)
    ids, mask = [], []
    for text, is_response in render(turns, END_CHAR if eot is None else ""):
        piece = tokenizer.encode(text) + ([eot] if is_response and eot is not None else [])
        ids.extend(piece)
        mask.extend([is_response] * len(piece))
    return ids, mask


def encode_pairs(examples, tokenizer) -> tuple:
    """``(tokens, mask)``: every example rendered and encoded (``encode_turns``), packed one after another (int32
    and bool arrays of one length); ``mask[i]`` is True when token i is response text (or its end token)."""
    tokens, mask = [], []
    for turns in examples:
        ids, m = encode_turns(turns, tokenizer)
        tokens.extend(ids)
        mask.extend(m)
    return np.asarray(tokens, dtype=np.int32), np.asarray(mask, dtype=bool)


def unencodable(path, tokenizer) -> str | None:
    """The first line of a pairs file that ``tokenizer`` cannot encode, as ``"FILE line N: why"`` naming the turn
    (the user's, the assistant's, ...); None if every line encodes."""
    for turns, _, where in _read(path):
        for role, content in turns:
            try:
                tokenizer.encode(content)
            except ValueError as e:
                why = re.sub(r" at position \d+", "", str(e).splitlines()[0])
                return f"{where}: in the {role}'s text, {why}"
    return None
