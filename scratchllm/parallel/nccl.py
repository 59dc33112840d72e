"""The ranks' sum and broadcast of GPU buffers through NCCL (``cupy.cuda.nccl``), for ``MPIDataParallel`` on CuPy:
one rank per GPU, MPI for everything else.

NCCL needs every rank to join one communicator, named by an id that one rank draws: rank 0 draws it
(``get_unique_id``) and MPI broadcasts it (``comm.bcast``), then every rank makes its ``NcclCommunicator(size, id,
rank)`` on its own device (``use_gpu_of_rank``: its index among the ranks of its node). The gradients' flat buffer
is then summed in place on the GPU (``allReduce``, on the current stream), with no copy through the host, and rank
0's parameters reach the others the same way (``bcast``). The loss's two numbers stay on MPI (they are on the host
anyway). docs/parallel.md.
"""

from __future__ import annotations


def use_gpu_of_rank(comm, runtime) -> int:
    """Make this rank's GPU current: its index among the ranks on its node. ``runtime``: ``cupy.cuda.runtime``.
    More ranks on a node than GPUs is an error (two ranks on one GPU would only queue behind each other)."""
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    rank, ranks, gpus = local.Get_rank(), local.Get_size(), runtime.getDeviceCount()
    if ranks > gpus:
        raise ValueError(f"{ranks} ranks on this node but {gpus} GPU(s): run one rank per GPU (--nproc={gpus})")
    runtime.setDevice(rank)
    return rank


class NcclCollectives:
    """In-place sum and broadcast over the ranks of ``comm`` for CuPy arrays (module docstring). ``nccl`` and
    ``cupy`` default to ``cupy.cuda.nccl`` and ``cupy`` (tests hand in stand-ins)."""

    def __init__(self, comm, nccl=None, cupy=None):
        if nccl is None or cupy is None:
            import cupy
            from cupy.cuda import nccl
        if not nccl.available:
            raise RuntimeError("CuPy was built without NCCL: install the nccl package for your CUDA "
                               "(e.g. pip install nvidia-nccl-cu12) to train on several GPUs")
        self.nccl, self.cupy = nccl, cupy
        uid = nccl.get_unique_id() if comm.Get_rank() == 0 else None
        uid = comm.bcast(uid, root=0)  # the communicator's name, drawn once, sent over MPI
        self.comm = nccl.NcclCommunicator(comm.Get_size(), uid, comm.Get_rank())
        self.types = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}

    def _args(self, a):
        if not a.flags.c_contiguous or str(a.dtype) not in self.types:
            raise TypeError(f"NCCL sums contiguous float32/float64 buffers; got {a.dtype}, contiguous "
                            f"{a.flags.c_contiguous}")
        return a.data.ptr, a.size, self.types[str(a.dtype)], self.cupy.cuda.get_current_stream().ptr

    def allreduce(self, a) -> None:
        """``a`` = the sum of every rank's ``a``, in place."""
        ptr, n, dtype, stream = self._args(a)
        self.comm.allReduce(ptr, ptr, n, dtype, self.nccl.NCCL_SUM, stream)

    def bcast(self, a, root: int = 0) -> None:
        """``a`` = rank ``root``'s ``a``, in place."""
        ptr, n, dtype, stream = self._args(a)
        self.comm.bcast(ptr, n, dtype, root, stream)
