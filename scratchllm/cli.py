"""Command line: ``scratchllm train | generate | convert | gradcheck | bench | info``. Bad arguments end with ONE
line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import math
import os
import platform
import sys

from .cli_models import (EXIT_FAIL, EXIT_USAGE, USAGE_ERRORS, UsageError, cmd_chat, cmd_convert, cmd_generate,
                         cmd_inspect)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --n_l=2 must not silently mean --n_layer=2
        super().__init__(*args, **kwargs)

    def error(self, message):  # argparse prints usage + message and exits 2; we want one line
        raise UsageError(f"{self.prog}: {message}")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gradcheck_targets(args):
    """(label, forward, backward, inputs, names) for each OP or FILE argument; UsageError for a bad one."""
    from .backend import xp_for
    from .gradcheck import OpFileError, load_op_file
    from .kernels.dispatch import dispatched
    from .ops import OPS, resolve

    xp = xp_for(args.backend)
    targets = []
    for arg in args.ops or list(OPS):
        if arg.endswith(".py") or os.sep in arg:
            try:
                f = load_op_file(arg)
            except OpFileError as e:
                raise UsageError(f"scratchllm gradcheck: {e}") from e
            cast = [a.astype(args.dtype) if args.dtype and getattr(a, "dtype", None) is not None
                    and a.dtype.kind == "f" else a for a in f.inputs]
            targets.append((arg, f.forward, f.backward,
                            tuple(xp.asarray(a) if hasattr(a, "dtype") else a for a in cast), f.names))
            continue
        try:
            op = OPS[resolve(arg)]
        except KeyError:
            raise UsageError(f"scratchllm gradcheck: unknown op {arg!r} (not a .py file either); "
                             f"choose from {', '.join(OPS)}") from None
        forward, backward = (dispatched(op.forward), dispatched(op.backward)) if args.dispatched else \
            (op.forward, op.backward)
        targets.append((op.name, forward, backward,
                        op.make_inputs(dtype=args.dtype or "float64", seed=args.seed, xp=xp), list(op.input_names)))
    return targets


def cmd_gradcheck(args) -> int:
    from .gradcheck import gradcheck
    from .gradcheck.opfile import where_in

    finite = math.isfinite(args.eps + args.atol + args.rtol)
    if not args.eps > 0 or not args.atol >= 0 or not args.rtol >= 0 or not finite:
        raise UsageError("scratchllm gradcheck: --eps must be > 0, --atol and --rtol finite and >= 0; got "
                         f"{args.eps:g}, {args.atol:g}, {args.rtol:g}")
    if args.seed < 0:
        raise UsageError(f"scratchllm gradcheck: --seed must be >= 0; got {args.seed}")
    targets = _gradcheck_targets(args)
    w = max(2, *(len(t[0]) for t in targets)) + 1
    header = (f"{'op':<{w}} {'input':<8} {'dtype':<8} {'mode':<19} {'checked':<36} {'max abs err':>11} "
              f"{'max rel err':>11}  ok")
    print(header)
    print("-" * len(header))
    failed, checks = [], {}
    for label, forward, backward, inputs, names in targets:
        try:
            report = gradcheck(forward, backward, inputs, mode=args.mode, eps=args.eps, atol=args.atol,
                               rtol=args.rtol, seed=args.seed, names=names, raise_on_fail=False)
        except Exception as e:  # the op's own code raised: that op fails, the others are still checked
            where = where_in(label, e) if label.endswith(".py") else ""
            print(f"{label:<{w}} FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}{where}")
            failed.append(label)
            continue
        for r in report.inputs:
            dtype = str(getattr(inputs[r.index], "dtype", "float64"))
            print(f"{label:<{w}} {r.name:<8} {dtype:<8} {r.mode:<19} {r.checked:<36} {r.max_abs_err:>11.3e} "
                  f"{r.max_rel_err:>11.3e}  {'yes' if r.ok else 'NO'}")
        for line in report.failures():
            print(f"  {line}")
        checks.update(dict.fromkeys(report.check_names()))
        if not report.ok:
            failed.append(label)
    verdict = "every op passed" if not failed else f"FAILED: {', '.join(failed)}"
    low = " (float32 gradients compared with the float64 ones)" if args.dtype == "float32" else ""
    print(f"\n{len(targets)} op{'s' * (len(targets) != 1)} checked in float64{low}: mode {args.mode}, "
          f"eps {args.eps:g}, atol {args.atol:g}, rtol {args.rtol:g}, seed {args.seed}")
    print("an input passes when every value is finite and max abs err <= atol + rtol * scale")
    if checks:
        print(f"also checked: {', '.join(checks)}")
    print(verdict)
    return EXIT_FAIL if failed else 0


def cmd_bench(args) -> int:
    from .bench import check_args, cli_run

    if args.compare:
        from .bench.compare import CompareError, cli_compare
        try:
            return cli_compare(args.compare)
        except CompareError as e:
            raise UsageError(f"scratchllm bench: {e}") from None
    try:
        check_args(args)
    except ValueError as e:
        raise UsageError(f"scratchllm bench: {e}") from None
    return cli_run(args)


def cmd_info(args) -> int:
    import numpy as np

    from .backend import cupy_status, device_info, resolve_backend

    usable, reason = cupy_status()
    print(f"scratchllm {_version('scratchllm') or '(not installed)'}")
    print(f"python     {platform.python_version()} ({platform.machine()}, {platform.system()})")
    print(f"backend    auto -> {resolve_backend('auto')} ({reason}); "
          f"SCRATCHLLM_BACKEND={os.environ.get('SCRATCHLLM_BACKEND', '(unset)')}")
    for dist in ("numpy", "scipy", "numba", "mkl", "cupy-cuda12x", "torch", "transformers", "hypothesis"):
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
    from .kernels import blas
    from . import kernels

    gpu = {**device_info(), "fused_kernels": kernels.enabled()} if usable else {}
    print("gpu        " + (", ".join(f"{k}={v}" for k, v in gpu.items()) if gpu else "none usable"))
    print(f"kernels    CUDA: {kernels.status()[1]}; CPU: {kernels.cpu_status()[1]}")
    print(f"shard GEMM {blas.status()[1]}")
    print("ops        fast implementations in order of preference (scratchllm/kernels/registry.py); [x] is what "
          "runs for the registry's float32 NumPy example, 'reference' the textbook in scratchllm/ops/")
    from .ops import OPS

    for name, op in OPS.items():
        impls = kernels.implementations(op.family)
        chosen = kernels.select(op.family, *op.make_inputs(dtype="float32"), **getattr(op.forward, "keywords", {}))
        names = [f"[{n}]" if n == chosen else n for n in [*impls, kernels.REFERENCE]]
        print(f"  {name:<20} {' '.join(names)}")
    return 0


def cmd_train(args) -> int:
    from .backend import BackendError
    from .train import TrainingDiverged, make_config, parse_overrides, train
    from .parallel.mpi import default_ranks, fail, launch, world

    comm = world()
    try:
        overrides, resume = parse_overrides(args.overrides)
        cfg = make_config(overrides)
        nproc = 1 if comm is not None else cfg.nproc or default_ranks(cfg.batch_size, cfg.backend)
        if nproc > 1:  # this process starts the ranks; each runs this command under MPI
            return launch(nproc, ["train", *args.overrides])
        summary = train(cfg, resume=resume, overrides=overrides)
    except TrainingDiverged as e:
        if comm is None or comm.Get_rank() == 0:  # the loss is the whole batch's: every rank stops, rank 0 says so
            print(f"scratchllm train: {e}", file=sys.stderr)
        return EXIT_FAIL
    except Exception as e:  # under MPI one rank's error ends every rank, printed once (as main would: exit 2)
        if comm is None:
            raise
        fail(comm, e, everywhere=isinstance(e, (BackendError, *USAGE_ERRORS)))
    val = f", val loss {summary['val_loss']:.4f}" if "val_loss" in summary else ""
    if comm is None or comm.Get_rank() == 0:
        ran = summary["steps_run"]
        upto = f" (to step {summary['step']})" if ran != summary["step"] else ""
        print(f"trained {ran} steps{upto} in {summary['seconds']:.1f} s{val}; checkpoints in {summary['out_dir']}",
              file=sys.stderr)
    return 0


def cmd_data(args) -> int:
    from .text.docstrings import write_docstring_pairs

    out = os.path.abspath(args.out)
    if os.path.isdir(out) or not os.path.isdir(os.path.dirname(out)):
        raise UsageError(f"scratchllm data: --out must be a file path in an existing directory; got {args.out}")
    if args.max_source_chars < 1:
        raise UsageError(f"scratchllm data: --max_source_chars must be >= 1; got {args.max_source_chars}")
    n = write_docstring_pairs(args.out, args.max_source_chars)
    print(f"wrote {n['pairs']} pairs from {n['modules']} modules to {n['out']}: {n['pairs'] - n['val']} train, "
          f"{n['val']} val from {n['val_modules']} modules the default corpus does not read", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .gradcheck import MODES, gradcheck

    p = _Parser(prog="scratchllm", description="A GPT from scratch: hand-written backprop on NumPy/CuPy.")
    p.add_argument("--version", action="version", version=f"scratchllm {_version('scratchllm') or ''}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = {k: p.default for k, p in inspect.signature(gradcheck).parameters.items()}  # the API's defaults
    g = sub.add_parser("gradcheck", help="check backwards against finite differences: the registry's ops, or "
                       "your own op's file", description="Check each OP of the registry (default: all) or each "
                       "FILE.py that defines forward(*inputs), backward(dout, cache) and example_inputs() (see "
                       "docs/backprop.md). Exit status 0 when everything passed, 1 when a check failed, 2 on bad "
                       "arguments.")
    g.add_argument("ops", nargs="*", metavar="OP|FILE.py", help="registry ops or op files (default: every op)")
    g.add_argument("--mode", choices=MODES, default=d["mode"],
                   help="full: every element; directional: random directions; sampled: random elements; auto: "
                   "full for small inputs, sampled + directional for large (default: %(default)s)")
    g.add_argument("--eps", type=float, default=d["eps"], help="finite-difference step (default: %(default)g)")
    g.add_argument("--atol", type=float, default=d["atol"], help="absolute tolerance (default: %(default)g)")
    g.add_argument("--rtol", type=float, default=d["rtol"],
                   help="relative tolerance, times the gradient's scale (default: %(default)g)")
    g.add_argument("--dtype", choices=("float64", "float32"), default=None,
                   help="dtype of the example inputs; the check itself runs in float64 (default: float64 for "
                   "registry ops, a file's own dtypes)")
    g.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="numpy",
                   help="array library of the inputs (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d["seed"],
                   help="seeds the example inputs, dout, directions and samples (default: %(default)s)")
    g.add_argument("--dispatched", action="store_true",
                   help="check a registry op as the model runs it (its fast implementation where one takes the "
                   "inputs: `scratchllm info` lists them), not the textbook in scratchllm/ops/")
    g.set_defaults(func=cmd_gradcheck)

    t = sub.add_parser("train", help="train a GPT or a Llama (default: the tiny GPT on the Python standard library)",
                       description="Config keys as --key=value (nanoGPT's names), --preset=tiny|cpu, --resume.")
    t.set_defaults(func=cmd_train, overrides=[])

    def model_source(p):  # the model to read: one of --ckpt and --hf
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--ckpt", help="a training run's out_dir or a checkpoint directory")
        src.add_argument("--hf", metavar="DIR", help="a Hugging Face GPT-2 or Llama directory (save_pretrained's, "
                                                     "with tokenizer)")

    def sampling(p):  # generate's and chat's
        p.add_argument("--max_new_tokens", type=int, default=200)
        p.add_argument("--temperature", type=float, default=0.8)
        p.add_argument("--top_k", type=int, default=0, help="0: no top-k cut")
        p.add_argument("--top_p", type=float, default=1.0)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto")

    gen = sub.add_parser("generate", help="generate text from a checkpoint or a Hugging Face GPT-2 or Llama directory")
    model_source(gen)
    gen.add_argument("--prompt", default="")
    sampling(gen)
    gen.set_defaults(func=cmd_generate)

    c = sub.add_parser("convert", help="Hugging Face GPT-2/Llama directory <-> scratchllm checkpoint",
                       description="--from_hf=DIR --out=CKPT_DIR, or --ckpt=DIR --to_hf=OUT_DIR.")
    c.add_argument("--from_hf", metavar="DIR", help="a Hugging Face GPT-2 or Llama directory to read")
    c.add_argument("--out", metavar="CKPT_DIR", help="the scratchllm checkpoint directory to write")
    c.add_argument("--tokenizer", metavar="PATH", help="with --from_hf: the tokenizer, when DIR holds none")
    c.add_argument("--ckpt", metavar="DIR", help="a scratchllm checkpoint (or run directory) to read")
    c.add_argument("--to_hf", metavar="OUT_DIR", help="the Hugging Face directory to write (GPT-2 or Llama, as the checkpoint)")
    c.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="dtype of the written weights (default: float32 from HF, the checkpoint's own)")
    c.set_defaults(func=cmd_convert)

    ch = sub.add_parser("chat", help="talk to a model fine-tuned on prompt/response pairs (--format=pairs); reads "
                                     "a pipe line by line when stdin is not a terminal")
    model_source(ch)
    sampling(ch)
    ch.set_defaults(func=cmd_chat)

    from .text.docstrings import MAX_SOURCE_CHARS
    dt = sub.add_parser("data", help="write a fine-tuning dataset: docstrings, (function source, first docstring "
                                     "line) pairs from the Python standard library (docs/finetune.md)")
    dt.add_argument("task", choices=("docstrings",))
    dt.add_argument("--out", required=True, help="the JSONL file to write (for train --format=pairs)")
    dt.add_argument("--max_source_chars", type=int, default=MAX_SOURCE_CHARS,
                    help="leave out functions longer than this (default: %(default)s)")
    dt.set_defaults(func=cmd_data)

    ins = sub.add_parser("inspect", help="attention maps, next-token losses and saliency of a prompt (PNG + JSON)")
    model_source(ins)
    ins.add_argument("--prompt", required=True, help="the text to inspect (at least two tokens)")
    ins.add_argument("--out", default="inspect", help="the directory to write attention.png, saliency.png and "
                                                     "inspect.json into (default: ./inspect)")
    ins.add_argument("--target", default=None, help="the next token whose log-probability saliency explains "
                                                    "(text of one token; default: the model's most likely)")
    ins.set_defaults(func=cmd_inspect)

    bn = sub.add_parser("bench", help="time every op (forward, backward) and a training step against torch",
                        description="Markdown on stdout; --json, --markdown, --plots write files. A progress bar on "
                                    "stderr. See benchmarks/RESULTS.md.")
    bn.add_argument("compare", nargs="*", metavar="compare A.json B.json",
                    help="compare two --json results row by row instead of running (B/A with intervals)")
    bn.add_argument("--suite", choices=("ops", "train", "all"), default="ops")
    bn.add_argument("--shapes", nargs="+", choices=("tiny", "gpt2-small", "sweep"), default=["gpt2-small"])
    bn.add_argument("--ops", nargs="+", metavar="OP", help="ops from the registry (default: all)")
    bn.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto",
                    help="auto: numpy, and cupy too when a GPU is usable")
    bn.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    bn.add_argument("--repeats", type=int, default=7, help="at least this many timed samples per case (>= 3)")
    bn.add_argument("--processes", type=int, default=3,
                    help="ops suite: time each side (ours, torch) in this many worker processes of its own, "
                         "alternating (default 3; 0: in this process)")
    bn.add_argument("--quick", action="store_true", help="a short time budget per measurement (said in the output)")
    bn.add_argument("--impls", action="store_true", help="ops suite: a row per registered implementation, side by side")
    bn.add_argument("--threads", type=int, help="threads of every pool: ours, BLAS, OpenMP (torch), MKL, Numba")
    bn.add_argument("--peaks", metavar="JSON",
                    help="take the ceilings from an earlier run's --json (fixed denominators across runs)")
    bn.add_argument("--batch", type=int, default=None, help="B of the gpt2-small shapes (default 8; 4 on the CPU)")
    bn.add_argument("--configs", nargs="+", metavar="NAME", help="train suite configs (default: cpu shakespeare-char)")
    bn.add_argument("--rounds", type=int, default=7, help="train suite: interleaved A/B rounds")
    bn.add_argument("--steps", type=int, default=None, help="train suite: steps per round (default: ~0.5 s)")
    bn.add_argument("--json", metavar="PATH", help="write the results and environment as JSON")
    bn.add_argument("--markdown", metavar="PATH", help="write the markdown tables")
    bn.add_argument("--plots", metavar="DIR", help="write time-vs-size and roofline plots (needs matplotlib)")
    bn.add_argument("--no-torch", action="store_true", help="leave the torch reference columns blank")
    bn.add_argument("--flush-l2", action="store_true", help="overwrite 256 MB (the GPU's L2, the CPU's LLC) before "
                                                            "every timed sample: cold-cache times")
    bn.add_argument("--cuda-graph", action="store_true", help="GPU: also time the calls replayed as one CUDA graph")
    bn.add_argument("--no-progress", action="store_true", help="no progress bar")
    bn.set_defaults(func=cmd_bench)

    i = sub.add_parser("info", help="backend, versions, BLAS, threads and GPU")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    from .backend import BackendError

    try:
        args, extra = build_parser().parse_known_args(argv)
        if args.func is cmd_train:
            args.overrides = extra
        elif extra:
            raise UsageError(f"scratchllm {args.command}: unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except UsageError as e:
        print(str(e).splitlines()[0], file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("scratchllm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`scratchllm gradcheck | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (*USAGE_ERRORS, BackendError) as e:
        if os.environ.get("SCRATCHLLM_DEBUG"):
            raise
        print(f"scratchllm: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
