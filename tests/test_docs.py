"""docs/backprop.md stays true: its python blocks run as written, and it covers every op in the registry."""

import ast
import re
from pathlib import Path

from scratchllm.ops import OPS

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "backprop.md"


def python_blocks(text):
    return re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.MULTILINE | re.DOTALL)


def test_doc_python_blocks_run():
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert blocks, f"no ```python blocks in {DOC}"
    code = "\n".join(blocks)
    exec(compile(code, str(DOC), "exec"), {"__name__": "__backprop_doc__"})


def test_doc_mentions_every_op():
    text = DOC.read_text(encoding="utf-8")
    for name, op in OPS.items():
        base = op.family  # gelu_erf -> gelu, attention_noncausal -> attention
        assert base in text and f"{base}_backward" in text, f"{DOC.name} does not cover op {name!r} ({base})"


def textbook_blocks(text):
    """(path, code) of every ```python textbook PATH block: the op's code as the doc shows it."""
    return re.findall(r"^```python textbook (\S+)[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.MULTILINE | re.DOTALL)


def without_docstring(source, fn):
    """The lines of function ``fn`` (an ast node of ``source``) without its docstring."""
    lines = source.splitlines()
    doc = fn.body[0]
    has_doc = isinstance(doc, ast.Expr) and isinstance(getattr(doc, "value", None), ast.Constant)
    body_start = doc.end_lineno if has_doc else doc.lineno - 1
    return lines[fn.lineno - 1:(doc.lineno - 1 if has_doc else body_start)] + lines[body_start:fn.end_lineno]


def test_the_textbook_code_in_the_doc_is_the_code_in_ops():
    """docs/backprop.md shows each op's forward and backward as they are in scratchllm/ops/ (docstrings left
    out): a change to either side without the other fails here."""
    blocks = textbook_blocks(DOC.read_text(encoding="utf-8"))
    shown = set()
    for path, code in blocks:
        source = (ROOT / path).read_text(encoding="utf-8")
        defs = {n.name: n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
        for fn in (n for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)):
            assert fn.name in defs, f"{DOC.name} shows {fn.name}, which {path} does not define"
            want = without_docstring(source, defs[fn.name])
            got = code.splitlines()[fn.lineno - 1:fn.end_lineno]
            assert got == want, f"{DOC.name}'s {fn.name} differs from {path}'s: copy it again"
            shown.add(fn.name)
    for op in OPS.values():
        assert {f"{op.family}_forward", f"{op.family}_backward"} <= shown, f"{DOC.name} does not show {op.family}"
