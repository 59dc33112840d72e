"""A worked fine-tuning task from the default corpus: (a function's source without its docstring, the docstring's
first line) pairs from the Python standard library, found with ``ast`` (``scratchllm data docstrings``).

The split is by module, so no module is in both splits, and the validation modules are files the default
pre-training corpus (``data.stdlib_files`` at the default ``data_cap_bytes``) did not read. A validation pair is
dropped when its source or its first line is also in the training split, or its first line appears in that corpus: the
held-out functions and their docstrings are new to a model pre-trained on the default corpus and fine-tuned on the
training split. Each line of the JSONL carries ``"split"`` ("train" | "val"), which ``train --format=pairs``
honours (``pairs.split_examples``).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import sysconfig
from pathlib import Path

from .data import DEFAULT_CAP_BYTES, stdlib_files

ALL_OF_IT = 1 << 40  # a cap that reads every file of the standard library
MAX_SOURCE_CHARS = 1000  # longer functions are left out: a small model's window sees only the end of one
MAX_SUMMARY_CHARS = 160  # longer first lines are left out
VAL_SHARE = 6  # one in VAL_SHARE of the modules the pre-training corpus left out is held out


def function_pairs(source: str) -> list:
    """``(qualified name, source without docstring, summary)`` for every function of a module's ``source`` that has
    a docstring: those at the top level and the methods of classes (not those under an ``if`` or ``try``; functions
    inside functions are part of their outer one's source). The summary is the docstring's first line (cut at the
    line's end when the sentence wraps; joining the paragraph was tried: the small model then learned longer
    replies and no longer stopped). A function whose docstring is its whole body, or shares a line with the code,
    is left out."""
    tree = ast.parse(source)
    lines = [line + "\n" for line in source.split("\n")]  # as ast numbers them (not str.splitlines: \f, \x1c, ...)
    pairs = []

    def visit(body, prefix):
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                pair = _pair(node, lines)
                if pair is not None:
                    pairs.append((prefix + node.name, *pair))

    visit(tree.body, "")
    return pairs


def _pair(node, lines):
    doc = ast.get_docstring(node, clean=False)
    if doc is None or len(node.body) < 2:
        return None
    summary = inspect.cleandoc(doc).strip().split("\n")[0].strip()  # the first line, as the task is defined
    expr = node.body[0]
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    if not summary or expr.lineno == node.body[-1].lineno or expr.lineno <= node.lineno or \
            node.body[1].lineno <= expr.end_lineno:
        return None
    kept = lines[start - 1:expr.lineno - 1] + lines[expr.end_lineno:node.end_lineno]
    indent = " " * node.col_offset  # a method's: cut from every line that has it (not from a string at column 0)
    code = "".join(line[len(indent):] if line.startswith(indent) else line for line in kept).rstrip()
    return code, summary


def _summary(summary: str) -> bool:
    """A summary worth learning: it starts with a letter, has two words or more (not ``>>> ...``, ``+`` or a lone
    ``Deprecated``) and at most MAX_SUMMARY_CHARS characters."""
    return summary[:1].isalpha() and len(summary.split()) >= 2 and len(summary) <= MAX_SUMMARY_CHARS


def _module(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def is_val_module(module: str) -> bool:
    """A fixed draw of one in ``VAL_SHARE`` modules (by a hash of the name, so every machine draws the same)."""
    return int(hashlib.sha256(module.encode()).hexdigest(), 16) % VAL_SHARE == 0


def docstring_examples(max_source_chars: int = MAX_SOURCE_CHARS, cap_bytes: int = DEFAULT_CAP_BYTES) -> list:
    """Every pair of the standard library as a dict: ``prompt`` (the source), ``response`` (the summary),
    ``module``, ``function`` and ``split``; modules in ``stdlib_files``' order (``os.walk``'s), train before val. A
    module in the first ``cap_bytes`` of the default corpus is always train; a val pair that repeats a train
    source or summary, or whose summary is in that corpus, is dropped (module docstring)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    read = stdlib_files(cap_bytes)
    seen, corpus = set(read), "".join(p.read_text(encoding="utf-8", errors="replace") for p in read)
    train, val = [], []
    for path in stdlib_files(ALL_OF_IT):
        try:
            pairs = function_pairs(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a file this Python cannot parse (bad_*.py fixtures, other encodings)
        module = _module(path, root)
        held_out = path not in seen and is_val_module(module)
        for name, code, summary in pairs:
            if len(code) <= max_source_chars and _summary(summary) and "\x04" not in code + summary:
                (val if held_out else train).append({"prompt": code, "response": summary, "module": module,
                                                     "function": name, "split": "val" if held_out else "train"})
    known = {ex["prompt"] for ex in train} | {ex["response"] for ex in train}
    val = [ex for ex in val if ex["prompt"] not in known and ex["response"] not in known
           and ex["response"] not in corpus]
    return train + val


def write_docstring_pairs(out, max_source_chars: int = MAX_SOURCE_CHARS, cap_bytes: int = DEFAULT_CAP_BYTES) -> dict:
    """Write the pairs as JSONL to ``out`` (atomically: a temporary file, then renamed); returns counts."""
    if max_source_chars < 1:
        raise ValueError(f"max_source_chars must be >= 1; got {max_source_chars}")
    examples = docstring_examples(max_source_chars, cap_bytes)
    splits = {split: sum(ex["split"] == split for ex in examples) for split in ("train", "val")}
    if not all(splits.values()):
        raise ValueError(f"max_source_chars={max_source_chars} leaves {splits['train']} train and {splits['val']} "
                         "val pairs; both need some")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    val = [ex for ex in examples if ex["split"] == "val"]
    return {"pairs": len(examples), "val": len(val), "modules": len({ex["module"] for ex in examples}),
            "val_modules": len({ex["module"] for ex in val}), "out": str(out)}
