"""The probe that finds Numba's threading layer: one tiny parallel loop (see ``prange_rows``)."""

from __future__ import annotations

import numba

from .compile import jit


@jit(parallel=True)
def probe(a):
    """a[i] = i for a (n,) float64, through ``prange``: the first parallel launch, which picks the layer."""
    for i in numba.prange(a.shape[0]):
        a[i] = i
