"""The models: each one batch's forward and an explicit backward composed from the ops (``gpt.py``: GPT-2).
``scratchllm.model`` is kept as the public alias of ``scratchllm.models.gpt``."""

from .gpt import GPT, GPTConfig, init_params, param_shapes

__all__ = ["GPT", "GPTConfig", "init_params", "param_shapes"]
