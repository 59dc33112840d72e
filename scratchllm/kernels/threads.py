"""CPU threads: run independent pieces of work on every core at once.

NumPy's elementwise ops and reductions use one core; only its matrix products (OpenBLAS) use them all. On
the CPU, ``DataParallel`` (parallel/) therefore splits a batch into shards, one per core, and runs the model on
each shard on its own core (data parallelism, as llm.c's OpenMP loops split B*T), in threads (``parallel_map``
here; across processes and machines, MPI ranks: parallel/mpi.py), and ops given large arrays cut them into
pieces on every thread (``parallel_chunks``). NumPy releases the GIL inside its loops, so threads really run side by side; meanwhile
OpenBLAS is held at one thread per call (``threadpoolctl``), so the cores are not oversubscribed.

The ops use the same threads for large arrays (``parallel_chunks``): their rows (or elements) are cut
into one contiguous chunk per core and the op's NumPy code runs on each chunk. Inside a batch shard, which
already has its core, they run in line.

``SCRATCHLLM_THREADS`` sets the number of threads (default: the CPUs this process may run on).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

ENV_VAR = "SCRATCHLLM_THREADS"
PARALLEL_MIN = 1 << 17  # elements (512 KB of float32): less work than this stays on the caller's thread
# The same for a fused CPU kernel (kernels/cpu/), which does in one pass what NumPy does in 5 to 18: handing
# work to another thread costs 60-90 us on the CI machine's VM, and below a million elements a kernel on one
# core measured as fast or faster than on two (layernorm at 256 x 1024: 126 us on one core, 237 on two)
KERNEL_PARALLEL_MIN = 1 << 20
KERNEL_PIECE = 1 << 18  # elements per piece of a fused kernel's work: its one pass needs no cache-sized pieces,
# each piece costs a Python call, and pieces stay small enough that the two threads' shares differ little
PIECE = 1 << 17  # elements per piece of an op's work: a few such arrays fit a core's L2 cache

_pool = None
_pool_lock = threading.Lock()
_inside = threading.local()  # set while a thread runs an item of parallel_map: nested calls run in line


def cpu_threads() -> int:
    """Threads to use on the CPU: ``SCRATCHLLM_THREADS`` if set, else the CPUs this process may use."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{ENV_VAR} must be a positive integer; got {value!r}")
        return int(value)
    return _usable_cpus(os.getpid())


@functools.lru_cache(maxsize=4)
def _usable_cpus(pid: int) -> int:
    """The CPUs this process may run on, looked up once per process (a system call; ``prange_rows`` asks
    at every kernel launch)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def _blas():
    """threadpoolctl's handle on the loaded BLAS libraries (found once: the scan takes milliseconds)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scratchllm")
        return _pool


@contextlib.contextmanager
def in_line():
    """Within the block, ``parallel_chunks`` runs on the caller's thread (as inside a batch shard)."""
    before = getattr(_inside, "active", False)
    _inside.active = True
    try:
        yield
    finally:
        _inside.active = before


def in_line_active() -> bool:
    """True on a thread that runs a single-core batch shard (inside ``in_line``, or in a shard worker)."""
    return getattr(_inside, "active", False)


def blas_one_thread():
    """A context manager holding OpenBLAS at one thread (the caller has its core; so does every shard)."""
    return _blas().limit(limits=1)


def parallel_map(fn, items) -> list:
    """``[fn(item) for item in items]``, each item on its own thread (the first on the caller's).

    OpenBLAS runs single-threaded meanwhile (each thread already has a core). Results come back in the
    items' order whatever order the threads finish in, so callers that combine them are deterministic. An
    exception in any item is raised after every thread has finished.
    """
    items = list(items)
    if len(items) <= 1 or in_line_active():
        return [fn(item) for item in items]

    def run(item):
        with in_line():
            return fn(item)

    pool = _get_pool(len(items) - 1)
    with blas_one_thread():
        futures = [pool.submit(run, item) for item in items[1:]]
        try:
            first = run(items[0])
        finally:
            for f in futures:  # wait for every thread before BLAS gets its threads back
                f.exception()
        return [first] + [f.result() for f in futures]


def shard_bounds(n: int, shards: int) -> list:
    """Split ``range(n)`` into ``shards`` contiguous slices whose lengths differ by at most one."""
    shards = max(1, min(shards, n))
    edges = [n * s // shards for s in range(shards + 1)]
    return [slice(edges[s], edges[s + 1]) for s in range(shards)]


def parallel_chunks(fn, n: int, size: int, xp=None, fused: bool = False) -> list:
    """``fn(rows)`` over contiguous slices ``rows`` that cover ``range(n)`` in order; the results in order.

    The rows are cut into pieces of at most about ``PIECE`` elements, with the rows dealt evenly among them
    (``size`` is the elements the whole work touches), so that the several passes NumPy makes over a piece
    find it in the core's cache instead of main memory, and the pieces are dealt out in contiguous runs to the
    CPU threads (``parallel_map``).
    Everything runs on the caller's thread when threads do not pay: ``size`` below ``PARALLEL_MIN``, one
    thread, arrays not on NumPy (``xp``), or already inside parallel work (a batch shard). ``fused``: the work
    is a fused CPU kernel's single pass, cut into ``KERNEL_PIECE`` pieces and parallel from
    ``KERNEL_PARALLEL_MIN``. Piece sizes never depend on the thread count, so neither do sums over pieces.
    """
    count = max(1, -(-size // (KERNEL_PIECE if fused else PIECE)))  # pieces of at most about PIECE elements,
    rows_per_piece = max(1, -(-n // count))  # with their rows dealt evenly (12 rows in 2 pieces: 6 + 6, not 8 + 4)
    pieces = [slice(i, min(i + rows_per_piece, n)) for i in range(0, n, rows_per_piece)] or [slice(0, n)]
    enough = size >= (KERNEL_PARALLEL_MIN if fused else PARALLEL_MIN)
    parallel = enough and len(pieces) > 1 and not in_line_active() and (
        xp is None or xp.__name__ == "numpy")
    threads = min(cpu_threads(), len(pieces)) if parallel else 1
    if threads == 1:
        return [fn(piece) for piece in pieces]
    runs = shard_bounds(len(pieces), threads)
    results = parallel_map(lambda run: [fn(piece) for piece in pieces[run]], runs)
    return [r for run in results for r in run]
