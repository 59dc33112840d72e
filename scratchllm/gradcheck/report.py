"""What ``gradcheck`` found: ``GradcheckReport`` (per input an ``InputReport``, with its worst ``Mismatch``
entries) and ``GradcheckError``, and how both read as text."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class GradcheckError(AssertionError):
    """A backward disagrees with finite differences, or breaks the op contract. Carries ``.report``."""

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


class Mismatch(NamedTuple):
    """One compared value. ``where`` is the element's index tuple into the input (``x[m.where]``), or the
    string ``"direction k"`` for the k-th random direction of the directional mode."""

    where: tuple | str
    analytic: float
    numeric: float
    abs_err: float
    rel_err: float


@dataclass
class InputReport:
    """The result for one checked input."""

    index: int
    name: str
    shape: tuple
    mode: str
    n_checked: int  # values compared: elements + directions
    max_abs_err: float
    max_rel_err: float
    ok: bool
    worst: list = field(default_factory=list)  # Mismatch entries, worst first (non-finite ones first)
    n_elements: int = 0  # elements compared one by one
    size: int = 0  # elements in the input
    n_directions: int = 0  # random directions compared
    n_nonfinite: int = 0  # analytic gradient entries that are inf or nan
    scale: float = 0.0  # an element passes when abs_err <= atol + rtol * scale (max |analytic|, |numeric|)
    direction_scale: float = 0.0  # ... a direction when abs_err <= atol + rtol * direction_scale (the norm)

    def over(self, m: Mismatch, atol: float, rtol: float) -> bool:
        """Whether ``m`` is beyond the tolerance (a non-finite value always is)."""
        scale = self.direction_scale if isinstance(m.where, str) else self.scale
        return not m.abs_err <= atol + rtol * scale

    @property
    def checked(self) -> str:
        """What was compared, e.g. "24 of 48 elements" or "all 48 elements + 4 directions"."""
        parts = []
        if self.n_elements or not self.n_directions:
            noun = "element" if self.size == 1 else "elements"
            parts.append(f"all {self.size} {noun}" if self.n_elements == self.size
                         else f"{self.n_elements} of {self.size} {noun}")
        if self.n_directions:
            parts.append(f"{self.n_directions} directions")
        return " + ".join(parts)


@dataclass
class GradcheckReport:
    """What ``gradcheck`` found: per-input errors, the contract checks that ran, and the settings used."""

    ok: bool
    inputs: list
    checks: list  # (name, ok, detail): one passing entry per check that ran, one entry per failure
    settings: dict

    @property
    def max_abs_err(self) -> float:
        return nanmax([r.max_abs_err for r in self.inputs])

    @property
    def max_rel_err(self) -> float:
        return nanmax([r.max_rel_err for r in self.inputs])

    def check_names(self) -> list:
        """The contract checks that ran, in order."""
        return list(dict.fromkeys(name for name, _, _ in self.checks))

    def __str__(self) -> str:
        s = self.settings
        lines = [f"gradcheck {'passed' if self.ok else 'FAILED'}: float64 central differences (eps {s['eps']:g}, "
                 f"seed {s['seed']}, mode {s['mode']})",
                 f"an input passes when every value is finite and max abs err <= atol + rtol * scale "
                 f"(atol {s['atol']:g}, rtol {s['rtol']:g})"]
        if self.inputs:
            w = max(5, *(len(r.name) for r in self.inputs))
            c = max(7, *(len(r.checked) for r in self.inputs))
            lines.append(f"{'input':<{w}} {'shape':<14} {'mode':<19} {'checked':<{c}} "
                         f"{'max abs err':>11} {'max rel err':>11}  ok")
            for r in self.inputs:
                lines.append(f"{r.name:<{w}} {str(r.shape):<14} {r.mode:<19} {r.checked:<{c}} "
                             f"{r.max_abs_err:>11.3e} {r.max_rel_err:>11.3e}  {'yes' if r.ok else 'NO'}")
        failed = [name for name, ok, _ in self.checks if not ok]
        passed = [name for name in self.check_names() if name not in failed]
        if passed:
            lines += textwrap.wrap("checks passed: " + ", ".join(passed), 116, subsequent_indent="  ")
        lines += self.failures()
        return "\n".join(lines)

    def failures(self) -> list:
        """Lines naming what failed: each failing input with its errors and worst values, then each failed check
        (empty for a report that passed)."""
        s = self.settings
        lines = []
        for r in self.inputs:
            if r.ok:
                continue
            lines.append(f"gradcheck failed for input {r.name!r} (index {r.index}, shape {r.shape}, mode {r.mode}, "
                         f"{r.checked}): max abs err {r.max_abs_err:.3e}, max rel err {r.max_rel_err:.3e} "
                         f"(atol {s['atol']:g}, rtol {s['rtol']:g})")
            lines.append("  worst elements (index, analytic, numeric, abs err, rel err):")
            lines += [f"    {fmt_where(m.where)}: {m.analytic:.10g}, {m.numeric:.10g}, {m.abs_err:.3e}, "
                      f"{m.rel_err:.3e}{'  <- over the tolerance' if r.over(m, s['atol'], s['rtol']) else ''}"
                      for m in r.worst]
        for name, ok, detail in self.checks:
            if not ok:
                lines.append(f"gradcheck failed check '{name}': {detail}")
        return lines


def nanmax(values) -> float:
    """The maximum, NaN if any value is NaN (Python's max() would skip a NaN that is not first)."""
    return float(np.max(values)) if len(values) else 0.0



def fmt_where(where) -> str:
    return where if isinstance(where, str) else str(where)


def finish(report: GradcheckReport, raise_on_fail: bool) -> GradcheckReport:
    """Return the report, or raise ``GradcheckError`` with its failures when it failed and ``raise_on_fail``."""
    if report.ok or not raise_on_fail:
        return report
    s = report.settings
    lines = report.failures()
    lines.append(f"  settings: mode={s['mode']} eps={s['eps']:g} atol={s['atol']:g} rtol={s['rtol']:g} "
                 f"seed={s['seed']}")
    raise GradcheckError("\n".join(lines), report)

