"""Finite-difference gradient checking for any forward/backward pair that follows the op contract.

    from scratchllm.gradcheck import gradcheck, GradcheckError
    report = gradcheck(forward, backward, inputs, mode="auto")     # raises GradcheckError on a mismatch
    print(report)                                                   # what was checked, and how well

``check.py`` holds the checker, ``report.py`` the report it returns, ``opfile.py`` the loader of a user's op
file (``scratchllm gradcheck path/to/my_op.py``).
"""

import sys
import types

from .check import MODES, auto_modes, gradcheck, input_names
from .opfile import OpFile, OpFileError, load_op_file
from .report import GradcheckError, GradcheckReport, InputReport, Mismatch

__all__ = ["gradcheck", "GradcheckError", "GradcheckReport", "InputReport", "Mismatch", "MODES", "auto_modes",
           "input_names", "OpFile", "OpFileError", "load_op_file"]


class _CallableModule(types.ModuleType):
    """``scratchllm.gradcheck`` is this module (``import scratchllm.gradcheck as g`` gives ``g.gradcheck``,
    ``g.GradcheckReport``, ...). The package once exported the function under the module's name, so calling
    the module still calls ``gradcheck``: ``from scratchllm import gradcheck; gradcheck(f, b, x)`` works."""

    def __call__(self, *args, **kwargs):
        return gradcheck(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

