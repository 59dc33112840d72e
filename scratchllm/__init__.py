"""scratchllm: a GPT built from scratch, every forward and backward pass written by hand in NumPy/CuPy."""

from .backend import get_xp, resolve_backend, synchronize, to_numpy
from . import gradcheck  # the module; calling it calls gradcheck.gradcheck (see its _CallableModule)
from .gradcheck import GradcheckError
from .hf import load_hf_gpt2, save_hf_gpt2
from .model import GPT, GPTConfig
from .optim import SGD, Adagrad, Adam, AdamW, clip_grad_norm, decay_groups, get_lr

__version__ = "0.1.0"

__all__ = ["__version__", "get_xp", "resolve_backend", "synchronize", "to_numpy", "gradcheck", "GradcheckError",
           "GPT", "GPTConfig", "SGD", "Adam", "AdamW", "Adagrad", "clip_grad_norm", "decay_groups", "get_lr",
           "load_hf_gpt2", "save_hf_gpt2"]
