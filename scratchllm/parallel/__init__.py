"""Data parallel: the model's forward and backward on shards of the batch at once, gradients summed
(``data_parallel.py``: threads in one process; ``mpi.py``: MPI ranks across processes and machines).
docs/parallel.md."""

from .data_parallel import DataParallel

__all__ = ["DataParallel"]
