"""Finite-difference gradient checker for any ``forward``/``backward`` pair that follows the op contract.

    out, cache = forward(*inputs)
    grads      = backward(dout, cache)     # one entry per positional input, None for integer inputs

The check runs in float64 whatever the inputs' dtype. With a seeded random ``dout`` (never all ones) it
compares the analytic gradient of the scalar L = sum(out * dout) against central differences:

    dL/dx_i  ~=  sum(dout * (f(x + eps e_i) - f(x - eps e_i))) / (2 eps)

Differencing the OUTPUTS before summing keeps every output entry that x_i does not touch exactly zero,
which makes the estimate far more accurate than differencing two large sums.

Error measure (per checked input): ``max_abs_err = max_i |analytic_i - numeric_i|`` and the normwise
``max_rel_err = max_abs_err / scale`` with ``scale = max(max|analytic|, max|numeric|)`` over the finite
values. An input passes when every compared value is finite and
``max_abs_err <= atol + rtol * scale``. Nothing is ignored: an inf or NaN anywhere in an analytic gradient,
or in a numeric derivative, fails the input and is named with its element and value (the maxima are
NaN-aware, so a NaN shows as ``nan``, never as a small error).
"""

from __future__ import annotations

import inspect

import numpy as np

from ..backend import get_xp, to_numpy
from .report import GradcheckReport, InputReport, Mismatch, finish, fmt_where, nanmax

MODES = ("auto", "full", "directional", "sampled")


def _is_array(a) -> bool:
    return hasattr(a, "dtype") and hasattr(a, "shape")


def _is_float_array(a) -> bool:  # also used by opfile.py
    return _is_array(a) and a.dtype.kind == "f"


def _describe(a) -> str:
    if _is_array(a):
        return f"{'an integer' if a.dtype.kind in 'iub' else 'a ' + str(a.dtype)} array"
    return f"a {type(a).__name__}, not an array"


def input_names(forward, n: int) -> list:
    """Names of the forward's positional parameters (``x``, ``w``, ...), or ``inputs[j]`` when unknown."""
    try:
        params = [p for p in inspect.signature(forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    return names + [f"inputs[{j}]" for j in range(len(names), n)]


def _where(flat_index: int, shape) -> tuple:
    return tuple(int(i) for i in np.unravel_index(int(flat_index), shape))


def _nonfinite_detail(what: str, a_host, limit=3) -> str:
    """"grad of 'x' has 2 non-finite of 48 elements: (1, 2) = inf, (3, 0) = nan"."""
    bad = np.flatnonzero(~np.isfinite(a_host.reshape(-1)))
    first = ", ".join(f"{_where(i, a_host.shape)} = {a_host.reshape(-1)[i]}" for i in bad[:limit])
    return f"{what} has {bad.size} non-finite of {a_host.size} elements: {first}{', ...' if bad.size > limit else ''}"


def auto_modes(sizes: dict, full_max: int) -> dict:
    """``mode="auto"``: each input of at most ``full_max`` elements is checked in full, and so is a larger one
    whose full check takes no longer than the full checks of those (each element costs the same two
    forwards); the rest get ``n_samples`` elements and ``n_directions`` directions."""
    budget = sum(size for size in sizes.values() if size <= full_max)
    return {j: "full" if size <= max(full_max, budget) else "sampled+directional" for j, size in sizes.items()}


def gradcheck(forward, backward, inputs, *, wrt=None, mode="auto", eps=1e-5, atol=1e-10, rtol=1e-7, seed=0,
              raise_on_fail=True, names=None, n_directions=4, n_samples=24, full_max=1024, n_worst=5):
    """Check ``backward`` against central finite differences of ``forward``.

    Args:
        forward, backward: an op pair (``forward(*inputs) -> (out, cache)``; ``backward(dout, cache) -> tuple``).
        inputs: the positional inputs of ``forward`` (NumPy or CuPy arrays; a Python float becomes a 0-d
            float64 array and is checked; integer arrays and other values are passed through as constants).
        wrt: indices of the inputs to check; default every float input.
        mode: "full" (every element), "directional" (``n_directions`` random unit directions u: vᵀJu from
            the analytic gradient against a central difference along u), "sampled" (``n_samples`` random
            elements of each input; the report says how many of how many), or "auto" (see ``auto_modes``:
            full up to ``full_max`` elements, sampled + directional above).
            Whatever the mode, every element whose analytic gradient is inf or nan is compared too.
        eps, atol, rtol: step and tolerances (see the module docstring for the error measure).
        seed: seeds ``dout``, directions and samples (a host ``numpy.random.Generator``).
        raise_on_fail: raise ``GradcheckError`` on failure; otherwise return the report with ``ok=False``.
        names: names for the inputs in messages; default the forward's parameter names.

    Besides values it checks (each named in ``report.checks``, passing or not): the forward's output is
    finite; grads are a tuple with one entry per input (trailing ``None`` entries for optional inputs left
    out are allowed); float inputs get a gradient array of their shape and dtype, finite everywhere, and
    other inputs get None; a zero ``dout`` gives exactly zero gradients; neither the inputs nor ``dout`` are
    mutated; float32 inputs give float32 gradients close to the float64 ones.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not eps > 0 or not np.isfinite(eps):
        raise ValueError(f"eps must be positive and finite; got {eps!r}")
    if not (0 <= atol < np.inf and 0 <= rtol < np.inf):  # an infinite tolerance would pass anything
        raise ValueError(f"atol and rtol must be finite and >= 0; got atol={atol!r}, rtol={rtol!r}")
    for key, value, least in (("seed", seed, 0), ("n_samples", n_samples, 1), ("n_directions", n_directions, 1),
                              ("full_max", full_max, 0), ("n_worst", n_worst, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise ValueError(f"{key} must be an integer >= {least} (a check that compares nothing proves "
                             f"nothing); got {value!r}")
    inputs = tuple(inputs)
    n = len(inputs)
    names = list(names) if names is not None else input_names(forward, n)
    if len(names) != n:
        raise ValueError(f"names must have one entry per input ({n}); got {len(names)}")
    xp = get_xp(*inputs)
    inputs = tuple(xp.asarray(a, dtype=np.float64) if type(a) is float else a for a in inputs)
    float_idx = [j for j, a in enumerate(inputs) if _is_float_array(a)]
    if wrt is None:
        wrt = float_idx
    wrt = [wrt] if isinstance(wrt, (int, np.integer)) else list(wrt)
    for j in wrt:
        if not isinstance(j, (int, np.integer)) or j not in float_idx:
            raise ValueError(f"wrt index {j!r} does not name a float array input (float inputs: {float_idx})")
    wrt = [int(j) for j in wrt]
    if not wrt:
        raise ValueError("nothing to check: no float input (a float array or a Python float) is named by wrt"
                         if float_idx else "nothing to check: forward has no float input (a float array or a "
                         "Python float)")
    # Mix a constant into the seed: with a bare default_rng(seed), dout would equal inputs a user drew with
    # the same seed (then x.T @ dout is symmetric and a transposed dw goes unnoticed).
    rng = np.random.default_rng([seed, 0x67726164])
    settings = dict(mode=mode, eps=eps, atol=atol, rtol=rtol, seed=seed, n_samples=n_samples,
                    n_directions=n_directions, full_max=full_max)
    checks = []

    def check(name, ok, detail=""):
        checks.append((name, bool(ok), "" if ok else detail))

    def check_all(name, failures):
        """One passing entry, or one entry per failure."""
        for detail in failures or [None]:
            check(name, detail is None, detail)

    originals = [a.copy() if hasattr(a, "copy") else a for a in inputs]
    x64 = [a.astype(np.float64) if j in float_idx else a for j, a in enumerate(inputs)]  # fresh copies
    x64_copies = [a.copy() if hasattr(a, "copy") else a for a in x64]

    result = forward(*x64)
    out = result[0] if isinstance(result, tuple) and len(result) == 2 else None
    if not _is_float_array(out):
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else _describe(result) + \
            (" (out alone? return out, cache)" if _is_array(result) else "")
        got += f" with out {_describe(out)}" if isinstance(result, tuple) and len(result) == 2 else ""
        check("forward returns (out, cache)", False, f"forward must return (out, cache) with out a float array; "
              f"got {got}")
        return finish(GradcheckReport(False, [], checks, settings), raise_on_fail)
    check("forward returns (out, cache)", True)
    cache = result[1]
    out_host = to_numpy(out)
    if not np.isfinite(out_host).all():  # L = sum(out * dout) is not finite: no derivative can be checked
        check("forward output finite", False, _nonfinite_detail("the output at the given inputs", out_host))
        return finish(GradcheckReport(False, [], checks, settings), raise_on_fail)
    check("forward output finite", True)
    dout = xp.asarray(rng.standard_normal(out.shape))  # float64, same shape as out (0-d for a scalar)
    dout_copy = dout.copy()
    grads = backward(dout, cache)
    check("dout not mutated", bool(xp.array_equal(dout, dout_copy)), "backward changed dout in place")
    mutated = [f"forward or backward changed input {names[j]!r} in place" for j in range(n)
               if _is_array(x64[j]) and not xp.array_equal(x64[j], x64_copies[j])]
    if isinstance(grads, tuple) and len(grads) > n and all(g is None for g in grads[n:]):
        grads = grads[:n]  # trailing Nones belong to optional inputs left out (linear's db when b is None)
    if not isinstance(grads, tuple) or len(grads) != n:
        got = f"a tuple of {len(grads)}" if isinstance(grads, tuple) else type(grads).__name__
        check("grads structure", False, f"backward must return a tuple with one entry per input ({n}); got {got}")
        return finish(GradcheckReport(False, [], checks, settings), raise_on_fail)
    check("grads structure", True)
    if len(float_idx) < n:
        check_all("non-float inputs get None", [f"input {names[j]!r} is {_describe(inputs[j])}; its grad must be None"
                                                for j in range(n) if j not in float_idx and grads[j] is not None])
    shape_failures, dtype_failures, finite_failures = [], [], []
    for j in wrt:
        g, want = grads[j], tuple(inputs[j].shape)
        if not (_is_array(g) and tuple(g.shape) == want):
            got = tuple(g.shape) if _is_array(g) else _describe(g) if g is not None else None
            shape_failures.append(f"grad of {names[j]!r} must have shape {want}; got {got}")
        elif g.dtype != np.float64:
            dtype_failures.append(f"grad of {names[j]!r} must be float64 for float64 inputs; got {g.dtype}")
        elif not np.isfinite(to_numpy(g)).all():
            finite_failures.append(_nonfinite_detail(f"grad of {names[j]!r}", to_numpy(g)))
    check_all("grad shapes", shape_failures)
    if shape_failures:
        return finish(GradcheckReport(False, [], checks, settings), raise_on_fail)
    check_all("grad dtypes", dtype_failures)
    check_all("grads finite", finite_failures)

    # A zero upstream gradient must give exactly zero gradients (catches constants added in backward).
    _, cache0 = forward(*x64)
    zero_grads = backward(xp.zeros_like(dout), cache0)
    zero_failures = []
    for j in wrt:
        g0 = to_numpy(zero_grads[j]) if isinstance(zero_grads, tuple) and len(zero_grads) > j else None
        if g0 is None or g0.shape != tuple(inputs[j].shape):
            zero_failures.append(f"grad of {names[j]!r} for dout = 0 is not an array of shape {inputs[j].shape}")
        elif not np.isfinite(g0).all():
            zero_failures.append(_nonfinite_detail(f"grad of {names[j]!r} for dout = 0", g0) + " (must be 0)")
        elif np.any(g0 != 0):
            i = int(np.argmax(np.abs(g0)))
            zero_failures.append(f"grad of {names[j]!r} is nonzero for dout = 0: {_where(i, g0.shape)} = "
                                 f"{g0.reshape(-1)[i]:.3e}")
    check_all("zero dout gives zero grads", zero_failures)

    # Low precision: gradients keep the input dtype and agree with the float64 ones.
    low = [j for j in wrt if inputs[j].dtype != np.float64]
    if low:
        out_lo, cache_lo = forward(*inputs)
        grads_lo = backward(dout.astype(out_lo.dtype), cache_lo)
        for j in low:
            g_lo = grads_lo[j] if isinstance(grads_lo, tuple) and len(grads_lo) > j else None
            ok = _is_array(g_lo) and g_lo.dtype == inputs[j].dtype and g_lo.shape == inputs[j].shape
            check("grad dtypes", ok, f"grad of {names[j]!r} must keep dtype {inputs[j].dtype}; "
                  f"got {g_lo.dtype if _is_array(g_lo) else _describe(g_lo)}")
            if ok and not np.isfinite(to_numpy(g_lo)).all():
                check("grads finite", False, _nonfinite_detail(f"{inputs[j].dtype} grad of {names[j]!r}",
                                                               to_numpy(g_lo)))
            if ok:
                with np.errstate(all="ignore"):
                    diff = nanmax(to_numpy(xp.abs(g_lo.astype(np.float64) - grads[j])).reshape(-1))
                    scale = nanmax(to_numpy(xp.abs(grads[j])).reshape(-1))
                tol = 1e3 * float(np.finfo(inputs[j].dtype).eps)
                check("low precision agrees", diff <= tol * scale + atol,
                      f"{inputs[j].dtype} grad of {names[j]!r} differs from float64 by {diff:.3e} "
                      f"(scale {scale:.3e}, allowed rel {tol:.1e})")
        mutated += [f"forward or backward changed input {names[j]!r} in place" for j in range(n)
                    if _is_array(inputs[j]) and not xp.array_equal(inputs[j], originals[j])]
    check_all("inputs not mutated", list(dict.fromkeys(mutated)))

    def loss_diff(j, delta):
        """sum(dout * (f(.., x_j + delta, ..) - f(.., x_j - delta, ..))), differenced per output entry."""
        plus = list(x64)
        plus[j] = x64[j] + delta
        minus = list(x64)
        minus[j] = x64[j] - delta
        out_plus, out_minus = forward(*plus)[0], forward(*minus)[0]
        with np.errstate(all="ignore"):
            return float((dout * (out_plus - out_minus)).sum())

    modes = auto_modes({j: int(inputs[j].size) for j in wrt}, full_max) if mode == "auto" else \
        {j: mode for j in wrt}
    results, numeric_failures = [], []
    for j in wrt:
        result, numeric_failure = _compare(j, names[j], grads[j], modes[j], loss_diff, rng, xp, eps, atol, rtol,
                                           n_samples, n_directions, n_worst)
        results.append(result)
        numeric_failures += [numeric_failure] if numeric_failure else []
    check_all("numeric derivatives finite", numeric_failures)
    report = GradcheckReport(all(r.ok for r in results) and all(ok for _, ok, _ in checks), results, checks,
                             settings)
    return finish(report, raise_on_fail)


def _compare(j, name, a, mode, loss_diff, rng, xp, eps, atol, rtol, n_samples, n_directions, n_worst):
    """Compare the analytic gradient ``a`` of input ``j`` with central differences, as ``mode`` says, plus every
    element whose analytic value is not finite. Returns (InputReport, a message if a numeric value is not
    finite, else None)."""
    a_host = to_numpy(a).reshape(-1)
    size = int(a.size)
    elements = []
    if mode == "full":
        elements = list(range(size))
    elif "sampled" in mode:
        elements = sorted(int(i) for i in rng.choice(size, min(n_samples, size), replace=False))
    nonfinite = np.flatnonzero(~np.isfinite(a_host))
    elements += [int(i) for i in nonfinite[:n_worst] if int(i) not in set(elements)]  # always compared
    rows = []  # (where, analytic, numeric)
    for i in elements:
        e = xp.zeros(size, dtype=np.float64)
        e[i] = eps
        rows.append((_where(i, a.shape), float(a_host[i]), loss_diff(j, e.reshape(a.shape)) / (2 * eps)))
    n_el = len(rows)
    n_dir = n_directions if "directional" in mode else 0
    for k in range(n_dir):
        u = rng.standard_normal(a.shape)
        u /= max(np.linalg.norm(u), 1e-300)
        u = xp.asarray(u)
        with np.errstate(all="ignore"):
            analytic = float((a * u).sum())
        rows.append((f"direction {k}", analytic, loss_diff(j, eps * u) / (2 * eps)))
    analytic, numeric = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    # One scale per kind of value: an element is measured against the largest element, a direction against
    # the gradient's norm (|g . u| <= ||g|| for a unit u); each at least the largest finite numeric value.
    finite = a_host[np.isfinite(a_host)]
    element_scale = max([float(np.abs(finite).max()) if finite.size else 0.0] +
                        [abs(v) for v in numeric[:n_el] if np.isfinite(v)])
    direction_scale = max([float(np.linalg.norm(finite))] + [abs(v) for v in numeric[n_el:] if np.isfinite(v)]) \
        if n_dir else 0.0
    scales = np.array([element_scale] * n_el + [direction_scale] * n_dir)
    with np.errstate(all="ignore"):
        errs = np.abs(analytic - numeric)  # inf or nan wherever either side is
        rels = np.where(scales > 0, errs / scales, np.where(errs == 0, 0.0, errs * np.inf))
    over = ~(errs <= atol + rtol * scales)  # a NaN is over too
    ok = not over.any() and nonfinite.size == 0
    order = sorted(range(len(rows)), key=lambda i: (not np.isnan(errs[i]), -np.nan_to_num(errs[i])))  # NaN first
    worst = [Mismatch(rows[i][0], rows[i][1], rows[i][2], float(errs[i]), float(rels[i])) for i in order[:n_worst]]
    result = InputReport(j, name, tuple(a.shape), mode, len(rows), nanmax(errs), nanmax(rels), ok, worst,
                         n_elements=n_el, size=size, n_directions=n_dir, n_nonfinite=int(nonfinite.size),
                         scale=element_scale, direction_scale=direction_scale)
    bad = [r for r in rows if not np.isfinite(r[2])]
    message = None if not bad else (f"the numeric derivative of {name!r} at {fmt_where(bad[0][0])} is {bad[0][2]}: "
                                    f"the forward is not finite within eps of the inputs")
    return result, message
