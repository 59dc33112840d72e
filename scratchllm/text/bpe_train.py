"""Byte-pair-encoding training: learn the merges from word counts (the part of ``tokenizer.py`` that trains).

``learn_merges`` works on token ids only; ``ByteBPETokenizer.train`` turns text into GPT-2-regex chunks, the
chunks into byte ids, and calls it. The rule (most frequent adjacent pair, ties to the smallest pair) is
Hugging Face ``tokenizers``' BpeTrainer's; ``tests/test_tokenizer.py`` checks the merges equal its merges.
"""

from __future__ import annotations

import heapq
from collections import Counter


def merge_pair(ids: list[int], pair: tuple, new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids``, left to right (``aaa`` with ``(a, a)`` -> ``Xa``)."""
    a, b = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def learn_merges(words: list[list[int]], freqs: list[int], vocab: list[bytes], max_merges: int) -> list[tuple]:
    """Up to ``max_merges`` merges (pairs of ids) for distinct ``words`` (lists of token ids) seen ``freqs``
    times, over a starting ``vocab`` (the bytes of ids 0..n-1), updating the pair counts incrementally.

    A max-heap of ``(-count, pair)`` gives the most frequent pair, ties to the smallest pair; an entry whose
    count is no longer the pair's count is stale and skipped (every change pushes a fresh entry). A merge's
    result takes the next id unless its bytes already are a token (then it reuses that id).
    """
    words = [list(w) for w in words]  # merged in place below: the caller's lists stay untouched
    counts, where = Counter(), {}  # pair -> weighted count; pair -> indices of words that may hold it
    for w, (word, f) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] += f
            where.setdefault(pair, set()).add(w)
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)
    vocab = list(vocab)
    index = {t: i for i, t in enumerate(vocab)}
    merges, start = [], len(vocab)
    while len(vocab) < start + max_merges and heap:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg or neg == 0:
            continue
        token = vocab[pair[0]] + vocab[pair[1]]
        if token not in index:
            index[token] = len(vocab)
            vocab.append(token)
        merges.append(pair)
        delta = Counter()
        for w in where.pop(pair):
            word, f = words[w], freqs[w]
            new = merge_pair(word, pair, index[token])
            if len(new) == len(word):
                continue  # a stale index entry: the word no longer holds the pair
            for p in zip(word, word[1:]):
                delta[p] -= f
            for p in zip(new, new[1:]):
                delta[p] += f
                where.setdefault(p, set()).add(w)
            words[w] = new
        for p, d in delta.items():
            if d:
                counts[p] += d
                if counts[p] > 0:
                    heapq.heappush(heap, (-counts[p], p))
                else:
                    del counts[p]
    return merges
