"""Pure-NumPy rewrites of ops: the same numbers as the textbook in ``scratchllm/ops/``, computed faster with
NumPy alone (the rows cut into pieces that run on every CPU thread through ``threads.parallel_chunks``,
temporaries written in place, sums as matrix products). They are what runs when Numba is not installed
(``kernels/cpu/`` runs otherwise), and are registered in ``scratchllm/kernels/registry.py``."""
