"""The package's layering: no import cycle (function-level imports included, so none can dodge one), and the
textbook ops import nothing of the fast paths."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "scratchllm"


def modules():
    """{module name: path} for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def imports(name, path, known):
    """The package's modules that ``name`` imports, anywhere in its file. A submodule's parent packages are
    left out of every spelling alike (Python loads them first whichever way the submodule is named)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:  # ``from pkg import mod`` imports mod; ``from mod import name`` imports mod
                out |= {f"{module}.{a.name}"} if f"{module}.{a.name}" in known else {module} & set(known)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
    return out - {name}


def test_no_import_cycle():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    state = {}  # name -> "open" while on the path, "done" after

    def visit(name, path):
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                cycle = path[path.index(other):] + [other]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if other not in state:
                visit(other, path + [other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_textbook_imports_no_fast_path():
    known = modules()
    for name, path in known.items():
        if name.startswith("scratchllm.ops"):
            bad = {m for m in imports(name, path, known)
                   if m.split(".")[1] in ("kernels", "parallel", "models", "model", "optim", "bench")}
            assert not bad, f"{name} imports {sorted(bad)}: a fast path belongs in scratchllm/kernels/"
