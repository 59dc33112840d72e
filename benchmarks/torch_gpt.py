"""The same GPT-2 in PyTorch eager, for benchmarks: moved into the package as ``scratchllm.bench.torch_ref.TorchGPT``
(``scratchllm bench --suite train`` uses it). Re-exported here for scripts that import it from this folder."""

from scratchllm.bench.torch_ref import TorchGPT

__all__ = ["TorchGPT"]
