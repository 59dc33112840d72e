"""Data parallel across processes and machines on MPI (mpi4py): the ``DataParallel`` interface, one rank per process.

Every rank holds the whole model and is handed the whole global batch (every rank draws the same batch indices);
rank r runs the rows ``shard_bounds(B, size)[r]`` of it through ``GPT.forward_rows`` and ``backward_rows``. What
makes the step the single-process step on the whole batch:

    loss       the mean over the M kept targets of the WHOLE batch: each rank's sum of its rows' losses and its
               count m_r, summed over the ranks (one Allreduce of two numbers), loss = sum / max(M, 1)
    gradients  rank r's backward starts from d loss / d logits of its rows, which is the cross-entropy's own
               backward scaled by m_r / M (its mean is over its m_r targets); each rank writes its gradients into
               one flat buffer laid out as the parameters, and one in-place Allreduce (SUM) adds the ranks'
    dropout    the step's seed is drawn on every rank from the same generator; row b draws its masks from
               ``default_rng([seed, b])`` (``GPT.forward_rows``), so the masks do not depend on the ranks
    parameters broadcast from rank 0 when the object is made, with the state of the model's dropout generator,
               so every rank starts from the same numbers and draws the same step seeds (the optimizer then
               makes the same update everywhere)

``scratchllm train`` under ``mpirun -n N`` (or ``--nproc=N``) uses it, and by default runs one rank per CPU when
mpi4py is installed (``default_ranks``): docs/parallel.md.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from ..backend import resolve_backend
from ..kernels.dispatch import cross_entropy_backward, cross_entropy_forward
from ..kernels.flat import empty_flat, flat_order, flat_span
from ..kernels.threads import cpu_threads, shard_bounds
from .nccl import NcclCollectives
from .proxy import StandsInForModel


EVERYWHERE_WAIT_S = 10.0  # ``fail(everywhere=True)``: how long ranks > 0 leave rank 0 to end the job


# Set in every rank's environment by Open MPI's mpirun (OMPI_), PMIx launchers (PMIX_), MPICH's Hydra and Slurm (PMI_)
RANK_ENV = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK")


def world():
    """``MPI.COMM_WORLD``, or None when mpi4py is not installed or this process was not started by mpirun with
    more than one rank. A process that no launcher started does not import mpi4py at all: starting MPI there
    (a "singleton") costs time and lets Open MPI take over signals (SIGHUP would no longer end the run)."""
    if not any(v in os.environ for v in RANK_ENV):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        return None
    # Open MPI hands the ranks a pseudo-terminal for stdout, so the colorama that Numba starts for its error
    # messages would write colour resets into a piped stdout at exit; Numba reads this when first imported.
    os.environ.setdefault("NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING", "1")
    return comm


class MPIDataParallel(StandsInForModel):
    """``model``'s forward and backward with the batch's rows dealt to the ranks of ``comm`` (module docstring)."""

    def __init__(self, model, comm=None):
        for name in ("forward_rows", "backward_rows", "check_inputs", "dropout_seed", "forward", "backward"):
            if not callable(getattr(model, name, None)):
                raise TypeError(f"model must have the GPT's row interface (no {name}); got {type(model).__name__}")
        from mpi4py import MPI  # here, not at the top: importing it starts MPI, which only MPI runs want

        self.MPI = MPI
        comm = MPI.COMM_WORLD if comm is None else comm
        self.model, self.comm = model, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.workers = self.size  # DataParallel's name for the count
        # GPU buffers are summed and broadcast by NCCL on the device (nccl.py); host buffers by MPI
        self.gpu = NcclCollectives(comm) if model.backend == "cupy" else None
        self.broadcast_params()

    def broadcast_params(self) -> None:
        """Rank 0's parameters to every rank (one Bcast of the flat buffer, or one per parameter), and its dropout
        generator's state (the step seeds: ``dropout_seed``)."""
        params = self.model.params
        arrays = [params[name] for name in flat_order(params)]
        span = flat_span(arrays)
        for a in ([span[0]] if span is not None else arrays):
            self.gpu.bcast(a) if self.gpu else self.comm.Bcast(a, root=0)
        rng = getattr(self.model, "rng", None)
        if rng is not None:
            rng.bit_generator.state = self.comm.bcast(rng.bit_generator.state, root=0)

    # ---------------------------------------------------------------------------------------------
    def forward(self, idx, targets=None, kv_cache=None):
        """``(logits of this rank's rows, the loss over the whole batch, cache)``; ``idx`` and ``targets`` are the
        whole batch, the same on every rank. With ``kv_cache`` (generation) the model runs the batch alone."""
        model = self.model
        if kv_cache is not None:
            return model.forward(idx, targets, kv_cache)
        idx, targets, _ = model.check_inputs(idx, targets)
        B = idx.shape[0]
        rows = shard_bounds(B, self.size)[self.rank] if B >= self.size else slice(0, B) if self.rank == 0 else \
            slice(0, 0)
        seed = model.dropout_seed()  # drawn on every rank: the generators stay in step
        cache = {"rows": rows}
        if rows.stop > rows.start:
            logits, cache["model"] = model.forward_rows(idx[rows], seed, rows.start)  # (b, T, V)
        else:
            logits = model.xp.empty((0, idx.shape[1], model.cfg.vocab_size), dtype=model.dtype)
        if targets is None:
            return logits, None, cache
        t = targets[rows]
        m = int((t != -1).sum())  # this rank's kept targets
        local = 0.0
        if m:
            loss, cache["loss"] = cross_entropy_forward(logits, t, ignore_index=-1)  # mean over its m targets
            local = float(loss) * m
        sums = np.array([local, float(m)])
        self.comm.Allreduce(self.MPI.IN_PLACE, sums)  # one Allreduce of (sum, count), in a fixed order
        total, count = sums
        cache.update(count=m, total_count=max(int(count), 1))
        return logits, model.dtype.type(total / max(count, 1.0)), cache

    def backward(self, cache, dloss=1.0) -> dict:
        """The whole batch's gradients on every rank: this rank's, in one flat buffer, summed over the ranks."""
        model = self.model
        if not isinstance(cache, dict) or "rows" not in cache:
            return model.backward(cache, dloss)
        if "total_count" not in cache:
            raise ValueError("backward needs the cache of a forward called with targets (there is no loss)")
        order = flat_order(model.params)
        flat, views = empty_flat({name: model.params[name] for name in order})
        if "loss" in cache:
            scale = float(dloss) * cache["count"] / cache["total_count"]  # its mean's gradient, as the batch's share
            dlogits, _ = cross_entropy_backward(model.xp.asarray(scale, dtype=model.dtype), cache["loss"])  # (b, T, V)
            model.backward_rows(dlogits, cache["model"], out=views)
        else:  # no rows, or no kept target: this rank adds zeros
            flat[...] = 0
        if self.gpu:
            self.gpu.allreduce(flat)  # the ranks' gradients summed, in place, on the GPUs
        else:
            self.comm.Allreduce(self.MPI.IN_PLACE, flat)  # the ranks' gradients summed, in place
        return {name: views[name] for name in model.params}


def share_cpus(comm) -> None:
    """This node's CPUs shared among its ranks: ``SCRATCHLLM_THREADS`` (unless set) and the BLAS pools at
    ``cpus // ranks on this node``, so that N ranks do not each start a thread per CPU."""
    from ..kernels.threads import ENV_VAR, cpu_threads

    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()  # the ranks on this node
    if not os.environ.get(ENV_VAR):
        os.environ[ENV_VAR] = str(max(1, (os.cpu_count() or 1) // local))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(cpu_threads())


def default_ranks(batch_size: int, backend: str) -> int:
    """The ranks ``scratchllm train`` runs by default (``--nproc=0``): one per CPU this process may use, at most
    one per row of the batch, when mpi4py and an mpirun are installed and the model runs on the host (``backend``
    numpy, or auto without a GPU); else 1, one process whose ``DataParallel`` runs the batch's shards in threads."""
    if backend == "cupy" or importlib.util.find_spec("mpi4py") is None or mpirun() is None \
            or resolve_backend(backend) != "numpy":
        return 1
    return max(1, min(cpu_threads(), batch_size))


def launch(nproc: int, argv: list) -> int:
    """``scratchllm ARGV`` as ``nproc`` MPI ranks through mpirun (Open MPI's, from the ``mpi`` extra, or the
    system's mpiexec): as root with ``--allow-run-as-root``, with ``--oversubscribe`` when there are more ranks
    than CPUs. Returns mpirun's exit status. On Linux mpirun is bound to this process: if it dies (even by
    ``kill -9``), the kernel sends mpirun SIGTERM and mpirun ends the ranks, rather than leaving them training."""
    runner = mpirun()
    if runner is None:
        raise ValueError(f"--nproc={nproc} needs mpirun or mpiexec: pip install scratchllm[mpi]")
    cmd = [runner]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "openmpi" in _implementation(runner):
        cmd.append("--allow-run-as-root")
    if nproc > (os.cpu_count() or 1) and "openmpi" in _implementation(runner):
        cmd.append("--oversubscribe")
    cmd += ["-n", str(nproc), sys.executable, "-m", "scratchllm", *argv]
    with subprocess.Popen(cmd, stderr=subprocess.PIPE,
                          preexec_fn=_end_with_parent if sys.platform == "linux" else None) as job:
        _relay(job.stderr.fileno(), sys.stderr)
        return job.wait()


def _relay(fd: int, out) -> None:
    """Copy mpirun's stderr to ``out`` as it comes (progress bars included), except Open MPI's boxed messages
    (between two lines of dashes) after a rank printed a ``scratchllm: error`` line: the job's end (an abort, a
    non-zero exit) is then told once, by that line, as in one process."""
    out = getattr(out, "buffer", out)
    rest, box, said = b"", None, False  # the unfinished line; the box's lines while one is read; an error said
    begun = b""  # the part of the current line already passed on (a progress bar's)
    while True:
        chunk = os.read(fd, 1 << 16)
        rest += chunk.replace(b"\0", b"")  # Open MPI ends its boxed notices with a NUL byte
        while rest:
            line, newline, after = rest.partition(b"\n")
            rule = not begun and line.strip(b"\r").startswith(b"-" * 20) and not line.strip(b"\r-")
            if not newline:  # an unfinished line: out now (a progress bar), unless it may become a rule
                if chunk and (box is not None or not (begun + line).strip(b"-")):
                    break
                if box is None:
                    out.write(line)
                    begun, rest = begun + line, b""
                break
            rest = after
            if box is None and not rule:
                out.write(line + newline)
                said = said or b"scratchllm: error" in begun + line
                begun = b""
            elif box is None:
                box = [line + newline]
            else:
                box.append(line + newline)
                if rule:
                    if not said:
                        out.write(b"".join(box))
                    box = None
        out.flush()
        if not chunk:
            if box:
                out.write(b"".join(box) + rest)
            out.flush()
            return


def _end_with_parent() -> None:
    """In the forked child before it becomes mpirun: ask Linux for SIGTERM when its parent (us) dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def mpirun():
    """The mpirun to start ranks with: on PATH, else beside this Python (a virtual environment's bin/, where the
    ``mpi`` extra's Open MPI puts it, when the environment is not activated), else mpiexec; None without one."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return shutil.which("mpirun") or (beside if os.access(beside, os.X_OK) else None) or shutil.which("mpiexec")


def _implementation(runner) -> str:
    """"openmpi" or "mpich" (or ""): which mpirun this is (their options differ)."""
    try:
        text = subprocess.run([runner, "--version"], capture_output=True, text=True, timeout=30).stdout.lower()
    except (OSError, subprocess.SubprocessError):
        return ""
    return "openmpi" if "open mpi" in text or "openrte" in text else "mpich" if "hydra" in text or "mpich" in text \
        else ""


def fail(comm, error: BaseException, everywhere: bool) -> None:
    """End every rank after ``error``: ``everywhere`` (a configuration error every rank meets alike): rank 0
    prints it and all exit 2; else this rank prints it with its rank and MPI_Abort ends the job (the others
    would wait in a collective forever)."""
    line = str(error).splitlines()[0] if str(error) else type(error).__name__
    if everywhere:  # rank 0 says it and exits 2 (without MPI_Finalize): mpirun then ends the other ranks
        if comm.Get_rank() != 0:  # exiting first, they could get rank 0 killed before it has said it; they wait
            time.sleep(EVERYWHERE_WAIT_S)  # (rank 0 did not meet this error, so it will not end the job: say it)
            print(f"scratchllm: error on rank {comm.Get_rank()} of {comm.Get_size()}: {line}", file=sys.stderr,
                  flush=True)
        else:
            print(f"scratchllm: error: {line}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)
    print(f"scratchllm: error on rank {comm.Get_rank()} of {comm.Get_size()}: {type(error).__name__}: {line}",
          file=sys.stderr, flush=True)
    comm.Abort(1)
