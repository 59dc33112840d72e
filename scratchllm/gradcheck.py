"""Finite-difference gradient checker for any ``forward``/``backward`` pair that follows the op contract.

    out, cache = forward(*inputs)
    grads      = backward(dout, cache)     # one entry per positional input, None for integer inputs

The check runs in float64 whatever the inputs' dtype. With a seeded random ``dout`` (never all ones) it
compares the analytic gradient of the scalar L = sum(out * dout) against central differences:

    dL/dx_i  ~=  sum(dout * (f(x + eps e_i) - f(x - eps e_i))) / (2 eps)

Differencing the OUTPUTS before summing keeps every output entry that x_i does not touch exactly zero,
which makes the estimate far more accurate than differencing two large sums.

Error measure (per checked input): ``max_abs_err = max_i |analytic_i - numeric_i|`` and the normwise
``max_rel_err = max_abs_err / max(max|analytic|, max|numeric|)``. An input passes when
``max_abs_err <= atol + rtol * max(max|analytic|, max|numeric|)``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

from .backend import get_xp, to_numpy

MODES = ("auto", "full", "directional", "sampled")


class GradcheckError(AssertionError):
    """A backward disagrees with finite differences, or breaks the op contract. Carries ``.report``."""

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


@dataclass
class InputReport:
    """The result for one checked input."""

    index: int
    name: str
    shape: tuple
    mode: str
    n_checked: int
    max_abs_err: float
    max_rel_err: float
    ok: bool
    worst: list = field(default_factory=list)  # (where, analytic, numeric, abs_err, rel_err), worst first


@dataclass
class GradcheckReport:
    """What ``gradcheck`` found: per-input errors, the contract checks, and the settings used."""

    ok: bool
    inputs: list
    checks: list  # (name, ok, detail)
    settings: dict

    @property
    def max_abs_err(self) -> float:
        return max((r.max_abs_err for r in self.inputs), default=0.0)

    @property
    def max_rel_err(self) -> float:
        return max((r.max_rel_err for r in self.inputs), default=0.0)

    def __str__(self) -> str:
        lines = [f"{'input':<12} {'shape':<16} {'mode':<20} {'max abs err':>12} {'max rel err':>12}  ok"]
        for r in self.inputs:
            lines.append(f"{r.name:<12} {str(r.shape):<16} {r.mode:<20} {r.max_abs_err:>12.3e} "
                         f"{r.max_rel_err:>12.3e}  {'yes' if r.ok else 'NO'}")
        for name in dict.fromkeys(name for name, _, _ in self.checks):
            failures = [detail for n, ok, detail in self.checks if n == name and not ok]
            lines.append(f"check {name}: " + ("FAILED - " + "; ".join(failures) if failures else "ok"))
        return "\n".join(lines)


def _is_float_array(a) -> bool:
    return hasattr(a, "dtype") and hasattr(a, "shape") and a.dtype.kind == "f"


def input_names(forward, n: int) -> list:
    """Names of the forward's positional parameters (``x``, ``w``, ...), or ``inputs[j]`` when unknown."""
    try:
        params = [p for p in inspect.signature(forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    return names + [f"inputs[{j}]" for j in range(len(names), n)]


def _fmt_where(where) -> str:
    return where if isinstance(where, str) else str(tuple(int(i) for i in where))


def gradcheck(forward, backward, inputs, *, wrt=None, mode="auto", eps=1e-5, atol=1e-10, rtol=1e-7, seed=0,
              raise_on_fail=True, names=None, n_directions=4, n_samples=24, full_max=1024, n_worst=5):
    """Check ``backward`` against central finite differences of ``forward``.

    Args:
        forward, backward: an op pair (``forward(*inputs) -> (out, cache)``; ``backward(dout, cache) -> tuple``).
        inputs: the positional inputs of ``forward`` (NumPy or CuPy arrays; integer arrays are passed through).
        wrt: indices of the inputs to check; default every float input.
        mode: "full" (every element), "directional" (``n_directions`` random unit directions u: vᵀJu from
            the analytic gradient against a central difference along u), "sampled" (``n_samples`` random
            elements of each input), or "auto": full up to ``full_max`` elements, sampled + directional above.
        eps, atol, rtol: step and tolerances (see the module docstring for the error measure).
        seed: seeds ``dout``, directions and samples (a host ``numpy.random.Generator``).
        raise_on_fail: raise ``GradcheckError`` on failure; otherwise return the report with ``ok=False``.
        names: names for the inputs in messages; default the forward's parameter names.

    Besides values it checks: grads are a tuple with one entry per input (trailing ``None`` entries for
    optional inputs left out are allowed); float inputs get a gradient of
    their shape and dtype (None for integer inputs); a zero ``dout`` gives zero gradients; neither the
    inputs nor ``dout`` are mutated; float32 inputs give float32 gradients close to the float64 ones.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive; got {eps!r}")
    inputs = tuple(inputs)
    n = len(inputs)
    names = list(names) if names is not None else input_names(forward, n)
    if len(names) != n:
        raise ValueError(f"names must have one entry per input ({n}); got {len(names)}")
    float_idx = [j for j, a in enumerate(inputs) if _is_float_array(a)]
    if wrt is None:
        wrt = float_idx
    wrt = [int(j) for j in ([wrt] if isinstance(wrt, int) else wrt)]
    for j in wrt:
        if j not in float_idx:
            raise ValueError(f"wrt index {j} does not name a float array input (float inputs: {float_idx})")
    xp = get_xp(*inputs)
    # Mix a constant into the seed: with a bare default_rng(seed), dout would equal inputs a user drew with
    # the same seed (then x.T @ dout is symmetric and a transposed dw goes unnoticed).
    rng = np.random.default_rng([seed, 0x67726164])
    settings = dict(mode=mode, eps=eps, atol=atol, rtol=rtol, seed=seed)
    checks = []

    def check(name, ok, detail=""):
        checks.append((name, bool(ok), detail))

    originals = [a.copy() if hasattr(a, "copy") else a for a in inputs]
    x64 = [a.astype(np.float64) if j in float_idx else a for j, a in enumerate(inputs)]  # fresh copies
    x64_copies = [a.copy() if hasattr(a, "copy") else a for a in x64]

    out, cache = forward(*x64)
    if not _is_float_array(out):
        raise GradcheckError(f"forward must return (out, cache) with out a float array; got {type(out).__name__}")
    dout = xp.asarray(rng.standard_normal(out.shape))  # float64, same shape as out (0-d for a scalar)
    dout_copy = dout.copy()
    grads = backward(dout, cache)
    check("dout not mutated", bool(xp.array_equal(dout, dout_copy)), "backward changed dout in place")
    for j in range(n):
        if hasattr(x64[j], "shape") and not xp.array_equal(x64[j], x64_copies[j]):
            check("inputs not mutated", False, f"forward or backward changed input {names[j]!r} in place")
    if isinstance(grads, tuple) and len(grads) > n and all(g is None for g in grads[n:]):
        grads = grads[:n]  # trailing Nones belong to optional inputs left out (linear's db when b is None)
    if not isinstance(grads, tuple) or len(grads) != n:
        got = f"a tuple of {len(grads)}" if isinstance(grads, tuple) else type(grads).__name__
        return _finish(GradcheckReport(False, [], checks + [("grads structure", False,
                       f"backward must return a tuple with one entry per input ({n}); got {got}")], settings),
                       raise_on_fail)
    for j in range(n):
        g = grads[j]
        if j not in float_idx:
            check("int inputs get None", g is None, f"input {names[j]!r} is an integer array; its grad must be None")
        elif j in wrt:
            ok = g is not None and tuple(g.shape) == tuple(inputs[j].shape)
            got = None if g is None else tuple(g.shape)
            check("grad shapes", ok, f"grad of {names[j]!r} must have shape {tuple(inputs[j].shape)}; got {got}")
            if ok:
                check("grad dtypes", g.dtype == np.float64,
                      f"grad of {names[j]!r} must be float64 for float64 inputs; got {g.dtype}")
    if any(name in ("grads structure", "grad shapes") and not ok for name, ok, _ in checks):
        return _finish(GradcheckReport(False, [], checks, settings), raise_on_fail)

    # A zero upstream gradient must give exactly zero gradients (catches constants added in backward).
    _, cache0 = forward(*x64)
    zero_grads = backward(xp.zeros_like(dout), cache0)
    for j in wrt:
        check("zero dout gives zero grads", not bool(xp.any(zero_grads[j] != 0)),
              f"grad of {names[j]!r} is nonzero for dout = 0")

    # Low precision: gradients keep the input dtype and agree with the float64 ones.
    low = [j for j in wrt if inputs[j].dtype != np.float64]
    if low:
        out_lo, cache_lo = forward(*inputs)
        grads_lo = backward(dout.astype(out_lo.dtype), cache_lo)
        for j in low:
            g_lo = grads_lo[j]
            ok = g_lo is not None and g_lo.dtype == inputs[j].dtype
            check("grad dtypes", ok, f"grad of {names[j]!r} must keep dtype {inputs[j].dtype}; "
                  f"got {None if g_lo is None else g_lo.dtype}")
            if ok:
                diff = float(xp.abs(g_lo.astype(np.float64) - grads[j]).max()) if g_lo.size else 0.0
                scale = float(xp.abs(grads[j]).max()) if g_lo.size else 0.0
                tol = 1e3 * float(np.finfo(inputs[j].dtype).eps)
                check("low precision agrees", diff <= tol * scale + atol,
                      f"{inputs[j].dtype} grad of {names[j]!r} differs from float64 by {diff:.3e} "
                      f"(scale {scale:.3e}, allowed rel {tol:.1e})")
        for j in range(n):
            if hasattr(inputs[j], "shape") and not xp.array_equal(inputs[j], originals[j]):
                check("inputs not mutated", False, f"forward or backward changed input {names[j]!r} in place")

    def loss_diff(j, delta):
        """sum(dout * (f(.., x_j + delta, ..) - f(.., x_j - delta, ..))), differenced per output entry."""
        plus = list(x64)
        plus[j] = x64[j] + delta
        minus = list(x64)
        minus[j] = x64[j] - delta
        return float((dout * (forward(*plus)[0] - forward(*minus)[0])).sum())

    results = []
    for j in wrt:
        a = grads[j]
        size = int(a.size)
        m = mode if mode != "auto" else ("full" if size <= full_max else "sampled+directional")
        rows, scale = [], float(xp.abs(a).max()) if size else 0.0
        if "full" in m or "sampled" in m:
            flat = np.arange(size) if m == "full" else rng.choice(size, min(n_samples, size), replace=False)
            a_host = to_numpy(a).reshape(-1)
            for i in flat:
                e = xp.zeros(size, dtype=np.float64)
                e[int(i)] = eps
                numeric = loss_diff(j, e.reshape(a.shape)) / (2 * eps)
                rows.append((np.unravel_index(int(i), a.shape), float(a_host[i]), numeric))
        if "directional" in m:
            for k in range(n_directions):
                u = rng.standard_normal(a.shape)
                u /= max(np.linalg.norm(u), 1e-300)
                u = xp.asarray(u)
                analytic = float((a * u).sum())
                numeric = loss_diff(j, eps * u) / (2 * eps)
                rows.append((f"direction {k}", analytic, numeric))
            scale = max(scale, float(xp.sqrt((a * a).sum())))  # |vᵀJu| <= ||g|| for a unit u
        scale = max([scale] + [abs(r[2]) for r in rows])
        errs = [abs(an - nu) for _, an, nu in rows]
        max_abs = max(errs, default=0.0)
        max_rel = max_abs / scale if scale > 0 else 0.0
        ok = max_abs <= atol + rtol * scale
        order = np.argsort(errs)[::-1][:n_worst]
        worst = [(_fmt_where(rows[i][0]), rows[i][1], rows[i][2], errs[i], errs[i] / scale if scale > 0 else 0.0)
                 for i in order]
        results.append(InputReport(j, names[j], tuple(a.shape), m, len(rows), max_abs, max_rel, ok, worst))
    report = GradcheckReport(all(r.ok for r in results) and all(ok for _, ok, _ in checks), results, checks,
                             settings)
    return _finish(report, raise_on_fail)


def _finish(report: GradcheckReport, raise_on_fail: bool) -> GradcheckReport:
    if report.ok or not raise_on_fail:
        return report
    s = report.settings
    lines = []
    for r in report.inputs:
        if r.ok:
            continue
        lines.append(f"gradcheck failed for input {r.name!r} (index {r.index}, shape {r.shape}, mode {r.mode}): "
                     f"max abs err {r.max_abs_err:.3e}, max rel err {r.max_rel_err:.3e} (rtol {s['rtol']:g})")
        lines.append("  worst elements (index, analytic, numeric, abs err, rel err):")
        lines += [f"    {w}: {an:.10g}, {nu:.10g}, {ae:.3e}, {re:.3e}" for w, an, nu, ae, re in r.worst]
    for name, ok, detail in report.checks:
        if not ok:
            lines.append(f"gradcheck failed check '{name}': {detail}")
    lines.append(f"  settings: mode={s['mode']} eps={s['eps']:g} atol={s['atol']:g} rtol={s['rtol']:g} "
                 f"seed={s['seed']}")
    raise GradcheckError("\n".join(lines), report)
