"""Command line: ``scratchllm gradcheck | info``.

Bad arguments end with ONE line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys

EXIT_FAIL, EXIT_USAGE = 1, 2


class UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message and exits 2; we want one line
        raise UsageError(f"{self.prog}: {message}")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cmd_gradcheck(args) -> int:
    from .backend import xp_for
    from .gradcheck import gradcheck
    from .ops import OPS

    names = args.ops or list(OPS)
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise UsageError(f"scratchllm gradcheck: unknown op {unknown[0]!r}; choose from {', '.join(OPS)}")
    xp = xp_for(args.backend)
    header = f"{'op':<16} {'input':<8} {'dtype':<8} {'mode':<20} {'max abs err':>12} {'max rel err':>12}  ok"
    print(header)
    print("-" * len(header))
    failed = []
    for name in names:
        op = OPS[name]
        inputs = op.make_inputs(dtype=args.dtype, seed=args.seed, xp=xp)
        report = gradcheck(op.forward, op.backward, inputs, mode=args.mode, seed=args.seed, rtol=args.rtol,
                           names=op.input_names, raise_on_fail=False)
        for r in report.inputs:
            print(f"{name:<16} {r.name:<8} {args.dtype:<8} {r.mode:<20} {r.max_abs_err:>12.3e} "
                  f"{r.max_rel_err:>12.3e}  {'yes' if r.ok else 'NO'}")
        for check, ok, detail in report.checks:
            if not ok:
                print(f"{name:<16} check {check!r} FAILED: {detail}")
        if not report.ok:
            failed.append(name)
    worst = "every op passed" if not failed else f"FAILED: {', '.join(failed)}"
    print(f"\n{len(names)} ops, {args.dtype} inputs checked in float64, rtol {args.rtol:g}: {worst}")
    return EXIT_FAIL if failed else 0


def cmd_info(args) -> int:
    import numpy as np

    from .backend import cupy_status, device_info, resolve_backend

    usable, reason = cupy_status()
    print(f"scratchllm {_version('scratchllm') or '(not installed)'}")
    print(f"python     {platform.python_version()} ({platform.machine()}, {platform.system()})")
    print(f"backend    auto -> {resolve_backend('auto')} ({reason}); "
          f"SCRATCHLLM_BACKEND={os.environ.get('SCRATCHLLM_BACKEND', '(unset)')}")
    for dist in ("numpy", "scipy", "cupy-cuda12x", "torch", "transformers", "hypothesis"):
        print(f"{dist:<10} {_version(dist) or '-'}")
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    print(f"blas       {blas.get('name', '?')} {blas.get('version', '')}".rstrip())
    threads = ", ".join(f"{v}={os.environ[v]}" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                          "MKL_NUM_THREADS") if v in os.environ)
    print(f"threads    {os.cpu_count()} CPUs{'; ' + threads if threads else ''}")
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            print(f"           {pool.get('internal_api')}: {pool.get('num_threads')} threads "
                  f"({pool.get('architecture', '')})")
    except ImportError:
        pass
    gpu = device_info() if usable else {}
    print("gpu        " + (", ".join(f"{k}={v}" for k, v in gpu.items()) if gpu else "none usable"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .gradcheck import MODES

    p = _Parser(prog="scratchllm", description="A GPT from scratch: hand-written backprop on NumPy/CuPy.")
    p.add_argument("--version", action="version", version=f"scratchllm {_version('scratchllm') or ''}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("gradcheck", help="check every op's backward against finite differences")
    g.add_argument("ops", nargs="*", metavar="OP", help="ops from the registry (default: all)")
    g.add_argument("--mode", choices=MODES, default="full")
    g.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="dtype of the example inputs (the check itself runs in float64)")
    g.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="numpy")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--rtol", type=float, default=1e-7)
    g.set_defaults(func=cmd_gradcheck)

    i = sub.add_parser("info", help="backend, versions, BLAS, threads and GPU")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    from .backend import BackendError

    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as e:
        print(str(e).splitlines()[0], file=sys.stderr)
        return EXIT_USAGE
    except (BackendError, ValueError, TypeError, FileNotFoundError) as e:
        if os.environ.get("SCRATCHLLM_DEBUG"):
            raise
        print(f"scratchllm: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
