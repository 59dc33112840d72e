"""The machine's ceilings, measured the way the rows are (medians, on every thread, each library in a process of
its own): the GEMM peak, and STREAM's copy and add bandwidth at three working sets (L2, the last-level cache,
DRAM). A row is compared with the ceiling of the level its working set fits in (``ceiling_for``).

STREAM (McCalpin) counts copy ``a = b`` as 2 words moved per element and add ``a = b + c`` as 3; here both run on
every thread at once (``kernels.threads``), a piece of the arrays per thread, as the kernels run.
"""

from __future__ import annotations

import numpy as np

from .timing import measure

LEVELS = ("L2", "LLC", "DRAM")


def working_sets(threads, l2_kb=None, llc_kb=None) -> dict:
    """Bytes of one STREAM array per level: a sixth of each thread's L2 (add's three arrays then fill half of
    it), a sixth of the LLC, and 8 LLCs (at least 256 MB)."""
    l2, llc = (l2_kb or 1024) * 1024, (llc_kb or 32 * 1024) * 1024
    return {"L2": l2 // 6 * threads, "LLC": llc // 6, "DRAM": max(8 * llc, 256 << 20)}


def stream(threads, l2_kb=None, llc_kb=None, timing=None) -> dict:
    """``{level: {"bytes": one array's size, "capacity": the cache's bytes (what a row's working set must fit
    in), "copy_gbs", "add_gbs"}}`` on ``threads`` threads (NumPy)."""
    from ..kernels.threads import parallel_map, shard_bounds

    capacity = {"L2": (l2_kb or 1024) * 1024 * threads, "LLC": (llc_kb or 32 * 1024) * 1024, "DRAM": None}
    out = {}
    for level, nbytes in working_sets(threads, l2_kb, llc_kb).items():
        n = nbytes // 4
        a, b, c = np.zeros(n, np.float32), np.ones(n, np.float32), np.ones(n, np.float32)
        parts = shard_bounds(n, threads)
        reps = max(1, (16 << 20) // (4 * n))  # a small working set: each thread repeats its piece (the hand-off
        # to a thread costs tens of µs, more than one pass over 128 KB)

        def run(kernel):
            return measure(lambda: parallel_map(lambda r: [kernel(r) for _ in range(reps)], parts), **(timing or {}))

        copy = run(lambda r: np.copyto(a[r], b[r]))
        add = run(lambda r: np.add(b[r], c[r], out=a[r]))
        out[level] = {"bytes": 4 * n, "capacity": capacity[level],
                      "copy_gbs": 2 * 4 * n * reps / copy["median_ms"] * 1e-6,
                      "add_gbs": 3 * 4 * n * reps / add["median_ms"] * 1e-6}
    return out


def gemm_gflops(lib, n, dtype, device="cpu", timing=None) -> float:
    """A square GEMM's GFLOP/s by median, through ``lib`` ("numpy", "torch" or "cupy")."""
    if lib == "numpy":
        a, c = np.ones((n, n), dtype), np.empty((n, n), dtype)
        t = measure(lambda: np.matmul(a, a, out=c), "cpu", **(timing or {}))
    elif lib == "cupy":
        import cupy

        a, c = cupy.ones((n, n), dtype), cupy.empty((n, n), dtype)
        t = measure(lambda: cupy.matmul(a, a, out=c), "cupy", **(timing or {}))
    else:
        import torch

        a = torch.ones((n, n), dtype=getattr(torch, str(dtype)), device=device)
        c = torch.empty_like(a)
        t = measure(lambda: torch.mm(a, a, out=c), device, **(timing or {}))
    return 2 * n**3 / t["median_ms"] * 1e-6


def ceiling_for(peak: dict, nbytes: int, gbs: float) -> dict:
    """The bandwidth ceiling a row is compared with: the fastest of copy and add at the smallest level whose
    cache holds the row's ``nbytes`` (its compulsory traffic); if the row moved its bytes faster than that (its
    data sat in a faster level, as a hot repeat's does), the next faster level's, named so. ``{"level", "gbs",
    "note"}``. By construction no row is above its named ceiling unless it beat every level measured, which
    the note says (the byte model, or the ceilings, are then wrong)."""
    levels = peak.get("levels")
    if not levels:  # peaks from before the hierarchy: one copy bandwidth
        return {"level": "copy", "gbs": peak["peak_gbs"], "note": ""}
    def holds(level):
        cap = levels[level].get("capacity", levels[level]["bytes"])  # peaks from before "capacity": one array
        return cap is None or nbytes <= cap

    fits = next((lv for lv in LEVELS if holds(lv)), LEVELS[-1])
    best = {lv: max(levels[lv]["copy_gbs"], levels[lv]["add_gbs"]) for lv in LEVELS}
    # a level's ceiling is the fastest of it and the slower levels: a smaller working set is never slower in
    # truth, only in a measurement that pays more per-call overhead for it (L2's small arrays)
    ceiling = {lv: max(best[slower] for slower in LEVELS[i:]) for i, lv in enumerate(LEVELS)}
    for level in LEVELS[LEVELS.index(fits)::-1]:  # from the level that holds it towards L2
        if gbs <= ceiling[level] or level == LEVELS[0]:
            note = "" if level == fits else f"hot: faster than its working set's {fits}"
            if gbs > ceiling[level]:
                note = "above every measured bandwidth: check the byte model"
            return {"level": level, "gbs": ceiling[level], "note": note}
    raise AssertionError("unreachable")
