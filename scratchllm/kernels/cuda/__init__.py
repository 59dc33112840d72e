"""The CUDA kernels, through CuPy (raw and elementwise kernels), one family per module: layernorm, softmax
(and attention's scaled causal softmax), gelu, cross_entropy, optim (the Adam/AdamW/Adagrad update), and
attention's Python around the softmax kernels. Importing a family does not import cupy (``_common.cupy`` is
loaded on first launch); the CUDA sources are module-level strings. docs/gpu.md describes every kernel."""
