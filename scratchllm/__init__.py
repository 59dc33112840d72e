"""scratchllm: a GPT built from scratch, every forward and backward pass written by hand in NumPy/CuPy."""

from .backend import get_xp, resolve_backend, synchronize, to_numpy
from .gradcheck import GradcheckError, gradcheck

__version__ = "0.1.0"

__all__ = ["__version__", "get_xp", "resolve_backend", "synchronize", "to_numpy", "gradcheck", "GradcheckError"]
