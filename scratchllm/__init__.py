"""scratchllm: a GPT built from scratch, every forward and backward pass written by hand in NumPy/CuPy.

The public names below load on first use (PEP 562): ``import scratchllm`` imports no Numba, CuPy or torch,
and not even the model until ``scratchllm.GPT`` is asked for.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {  # public name -> the module that defines it
    "get_xp": "backend", "resolve_backend": "backend", "synchronize": "backend", "to_numpy": "backend",
    "GradcheckError": "gradcheck",
    "GPT": "models.gpt", "GPTConfig": "models.gpt",
    "SGD": "optim", "Adam": "optim", "AdamW": "optim", "Adagrad": "optim", "clip_grad_norm": "optim",
    "decay_groups": "optim", "get_lr": "optim",
    "DataParallel": "parallel",
    "load_hf_gpt2": "io.hf", "save_hf_gpt2": "io.hf",
}

__all__ = ["__version__", "gradcheck", *_LAZY]


def __getattr__(name):
    if name == "gradcheck":  # the module (calling it calls gradcheck.gradcheck: see its _CallableModule)
        return importlib.import_module(f"{__name__}.gradcheck")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
