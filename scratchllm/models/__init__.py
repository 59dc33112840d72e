"""The models: each one batch's forward and an explicit backward composed from the ops (``gpt.py``: GPT-2;
``llama.py``: Llama), on the bookkeeping they share (``base.py``). ``scratchllm.model`` is kept as the public
alias of ``scratchllm.models.gpt``."""

from .gpt import GPT, GPTConfig, init_params, param_shapes
from .llama import Llama, LlamaConfig, llama_init_params, llama_param_shapes

ARCHS = {"gpt": GPT, "llama": Llama}  # a checkpoint's and the trainer's "arch" -> the model class

__all__ = ["ARCHS", "GPT", "GPTConfig", "init_params", "param_shapes", "Llama", "LlamaConfig", "llama_init_params",
           "llama_param_shapes"]
