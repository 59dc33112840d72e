"""``scratchllm chat``: a conversation with a model fine-tuned on prompt/response pairs, in their template.

The conversation so far is rendered through the pairs template (``text/pairs.py``) and ends with the assistant's
header; the reply is generated after it, streamed, until the end token (the tokenizer's end-of-text, or
``END_CHAR``) or ``max_new_tokens``. When the conversation no longer fits the context with room for the reply, the
oldest turns are dropped first (the newest user turn always stays; if it alone is too long, its last tokens).
"""

from __future__ import annotations

import sys

from .generate import generate_text
from .text.pairs import END_CHAR, encode_turns

ASSISTANT = "### Assistant:\n"


def conversation_ids(tokenizer, history, context: int, room: int) -> list:
    """The token ids of ``history`` (``(role, content)`` turns, the last one the user's) and the assistant's header,
    cropped from the oldest turns to at most ``context - room`` tokens. Turns are encoded as in training
    (``pairs.encode_turns``): a typed ``<|endoftext|>`` is text."""
    budget = max(1, context - room)
    header = tokenizer.encode(ASSISTANT)
    for first in range(len(history)):
        ids = encode_turns(history[first:], tokenizer)[0] + header
        if len(ids) <= budget or first == len(history) - 1:
            return ids[-budget:]
    return []


def reply(model, tokenizer, history, max_new_tokens=200, temperature=0.8, top_k=None, top_p=1.0, seed=0,
          stream=None, room=None) -> str:
    """The assistant's next turn after ``history``, streamed to ``stream`` as it comes; the end token stops it.
    ``room``: the tokens of the context left free for the reply (default: ``max_new_tokens``, at most half the
    context); the rest holds the conversation, and past it the window slides (``generate_ids``)."""
    room = min(max_new_tokens, model.context // 2) if room is None else room
    ids = conversation_ids(tokenizer, history, model.context, room)
    return generate_text(model, tokenizer, "", max_new_tokens, temperature, top_k, top_p, seed, stream=stream,
                         ids=ids, stop=stop_ids(tokenizer))


def stop_ids(tokenizer) -> set:
    """The ids that end a reply: the end-of-text token, or END_CHAR's (none for a tokenizer without either)."""
    eot = getattr(tokenizer, "eot_id", None)
    return {eot} if eot is not None else set(tokenizer.encode(END_CHAR)) if _has(tokenizer, END_CHAR) else set()


def _has(tokenizer, text) -> bool:
    try:
        tokenizer.encode(text)
    except ValueError:  # a character tokenizer without it (a model never fine-tuned on pairs)
        return False
    return True


def run(model, tokenizer, lines, write, ask=None, **sampling) -> int:
    """The conversation loop: each line from ``lines`` is a user turn, each reply is written with ``write``;
    ``ask`` (interactive) shows a prompt before each line. Ends at the end of ``lines`` (EOF) or on "/exit"."""
    eot = getattr(tokenizer, "eot_id", None)
    if eot is None and not _has(tokenizer, END_CHAR):
        raise ValueError("this checkpoint's tokenizer has no end token (\\x04): chat talks to a model fine-tuned "
                         "with --format=pairs")
    history = []
    while True:
        if ask:
            ask()
        line = next(lines, None)
        if line is None or line.strip() == "/exit":
            if line is None and ask:
                write("\n")
            return 0
        history.append(("user", line.rstrip("\r\n")))
        try:
            text = reply(model, tokenizer, history, stream=write, **sampling)
        except ValueError as e:  # a character the tokenizer does not know: this turn is skipped, the chat goes on
            history.pop()
            print(f"scratchllm chat: {str(e).split(' at position')[0]} in that line; say it another way",
                  file=sys.stderr, flush=True)
            continue
        write("\n")
        history.append(("assistant", text))
        sampling["seed"] = sampling.get("seed", 0) + 1  # another draw for the next reply
