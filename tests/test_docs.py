"""docs/backprop.md stays true: its python blocks run as written, and it covers every op in the registry."""

import re
from pathlib import Path

from scratchllm.ops import OPS

DOC = Path(__file__).parents[1] / "docs" / "backprop.md"


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
