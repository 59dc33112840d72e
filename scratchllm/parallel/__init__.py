"""Data parallel: the model's forward and backward on shards of the batch at once, gradients summed
(``data_parallel.py``; shards in worker processes: ``processes.py``). docs/parallel.md."""

from .data_parallel import DataParallel

__all__ = ["DataParallel"]
