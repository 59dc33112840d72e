"""A user's own op in a file, for ``scratchllm gradcheck path/to/my_op.py``.

The file defines, at module level, the op contract and its example inputs::

    def forward(x, a):            # -> (out, cache)
    def backward(dout, cache):    # -> (dx, da): one entry per input of forward, None for integer inputs
    def example_inputs():         # -> (x, a): a tuple of inputs for forward

See docs/backprop.md, "Write your own op and check it", and docs/examples/softclip.py.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .check import _is_float_array, input_names

REQUIRED = ("forward", "backward", "example_inputs")


class OpFileError(ValueError):
    """The file cannot be checked (missing, does not import, lacks a name): one line naming file and problem."""


@dataclass(frozen=True)
class OpFile:
    """The op a file defines, with its example inputs and the forward's parameter names."""

    path: str
    forward: Callable
    backward: Callable
    inputs: tuple
    names: list


def where_in(path, error: BaseException) -> str:
    """" (my_op.py line 12)" for the deepest frame of ``error``'s traceback inside ``path``, else ""."""
    path = Path(path).resolve()
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == path]
    return f" ({path.name} line {frames[-1].lineno})" if frames else ""


def load_op_file(path) -> OpFile:
    """Import ``path`` (its folder first on ``sys.path`` meanwhile, so it can import its neighbours) and
    return its op; ``OpFileError`` if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise OpFileError(f"{path}: {'a directory, not a .py file' if path.is_dir() else 'no such file'}")
    if path.suffix != ".py":
        raise OpFileError(f"{path}: not a .py file")
    name = f"scratchllm_user_op_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would (dataclasses and pickling look the module up there)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: report it in one line, where it happened
        del sys.modules[name]
        raise OpFileError(f"{path}: importing it raised {type(e).__name__}: {e}{where_in(path, e)}") from e
    finally:
        sys.path.remove(str(path.resolve().parent))
    missing = [name for name in REQUIRED if not callable(getattr(module, name, None))]
    if missing:
        raise OpFileError(f"{path} must define forward(*inputs), backward(dout, cache) and example_inputs(); "
                          f"missing: {', '.join(missing)}")
    try:
        inputs = module.example_inputs()
    except Exception as e:
        raise OpFileError(f"{path}: example_inputs() raised {type(e).__name__}: {e}{where_in(path, e)}") from e
    if not isinstance(inputs, (tuple, list)) or not any(type(a) is float or _is_float_array(a) for a in inputs):
        got = type(inputs).__name__ if not isinstance(inputs, (tuple, list)) else \
            f"({', '.join(type(a).__name__ for a in inputs)}), no float array among them"
        raise OpFileError(f"{path}: example_inputs() must return a tuple of the inputs of forward, at least one a "
                          f"float array; got {got}")
    return OpFile(str(path), module.forward, module.backward, tuple(inputs), input_names(module.forward, len(inputs)))
