"""``scratchllm bench``: time every op of ``ops.OPS`` (forward and backward) and a whole training step, on
every available backend, against PyTorch as the reference.

Suites: ``ops`` (``ops.py``: shape sets, correctness checks, FLOP/byte models) and ``train``
(``train.py``: forward + backward + AdamW against PyTorch eager, the identical model). This module holds
what both share: the clocks, the machine's measured peaks, the environment record and the output.

Timing (``timing.py``): sampling by time (a warm-up of at least 25 ms, samples until 0.2 s is spent), each
side of a comparison in worker processes of its own (``isolate.py``), medians with bootstrap 95 % intervals and
flags. CPU: ``perf_counter`` around back-to-back calls. GPU: CUDA events around the calls, with the host's
enqueueing time beside them (``launch-bound`` when the GPU waits on Python) and, with ``--cuda-graph``, the calls
replayed as one CUDA graph. Ceilings (``ceilings.py``): the GEMM peak and STREAM bandwidth at the L2, LLC and
DRAM working sets, by median on all threads; each row's % is of the level its bytes fit in. Provenance
(``provenance.py``): commit, CPU, threads, versions, GPU driver, clocks and TF32.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from ..backend import cupy_status, tune_host_allocator
from . import ops as bench_ops, train as bench_train
from .load import OtherLoad  # noqa: F401 (part of bench's API)
from .ceilings import gemm_gflops, stream
from .provenance import THREAD_VARS, cpu_clock, environment
from .tables import ops_markdown
from .timing import MIN_REPEAT_S, QUICK, import_torch, l2_flusher, make_clock, measure, summarize  # noqa: F401
from ..kernels.threads import cpu_threads

# ---------------------------------------------------------------------------------------- machine peaks
def _torch_gemm_apart(n, dtype, device):
    """torch's GEMM GFLOP/s measured in a process of its own (not after NumPy's threads in this one)."""
    code = (f"from scratchllm.bench.ceilings import gemm_gflops; "
            f"print(gemm_gflops('torch', {n}, '{dtype}', '{device}'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return float(done.stdout.strip()) if done.returncode == 0 else None


def measure_peaks(devices, dtype="float32", torch=None, gemm_n=None, copy_mb=None) -> dict:
    """The ceilings per device ("cpu", "gpu"), measured here by median (``ceilings.py``): GEMM GFLOP/s (NumPy's
    here, torch's in a process of its own), and on the CPU STREAM copy/add GB/s on every thread at the L2, LLC and
    DRAM working sets. ``peak_gflops`` and ``peak_gbs`` (the fastest level) are the roofline's corners."""
    out = {"dtype": str(dtype)}
    if "cpu" in devices:
        n, clock = gemm_n or 3072, cpu_clock()  # GEMM efficiency grows with size: 3072³ is at the top
        levels = stream(cpu_threads(), clock["l2_kb"], clock["llc_kb"])
        if copy_mb:  # tests: a small DRAM set
            levels = stream(cpu_threads(), 64, copy_mb * 1024 // 8)
        cpu = {"gemm_n": n, "threads": cpu_threads(), "numpy_gemm_gflops": gemm_gflops("numpy", n, dtype),
               "levels": levels, "numpy_copy_gbs": levels["DRAM"]["copy_gbs"],
               "copy_mb": levels["DRAM"]["bytes"] >> 20}
        if torch is not None:
            cpu["torch_gemm_gflops"] = _torch_gemm_apart(n, dtype, "cpu")
        cpu["peak_gflops"] = max(v for k, v in cpu.items() if k.endswith("gemm_gflops") and v)
        cpu["peak_gbs"] = max(max(lv["copy_gbs"], lv["add_gbs"]) for lv in levels.values())
        out["cpu"] = cpu
    if "gpu" in devices:
        import cupy

        n, mb = gemm_n or 8192, copy_mb or 1024
        src, dst = cupy.ones(mb * 2**20 // 4, cupy.float32), cupy.empty(mb * 2**20 // 4, cupy.float32)
        gpu = {"gemm_n": n, "copy_mb": mb, "cupy_gemm_gflops": gemm_gflops("cupy", n, dtype),
               "cupy_copy_gbs": 2 * src.nbytes / measure(lambda: cupy.copyto(dst, src), "cupy")["median_ms"] * 1e-6}
        if torch is not None and torch.cuda.is_available():
            gpu["torch_gemm_gflops"] = _torch_gemm_apart(n, dtype, "cuda")
        gpu["peak_gflops"] = max(v for k, v in gpu.items() if k.endswith("gemm_gflops") and v)
        gpu["peak_gbs"] = gpu["cupy_copy_gbs"]
        out["gpu"] = gpu
    return out


# ------------------------------------------------------------------------------------------------- run
def run_bench(suite="ops", shapes=("gpt2-small",), ops=None, backend="auto", dtype="float32", repeats=7,
              batch=None, use_torch=True, flush_l2=False, train_configs=None, rounds=7, steps=None,
              progress=True, registry=None, peaks=None, argv=None, quick=False, processes=3, impls=False,
              cuda_graph=False) -> dict:
    """Run the suites; returns the JSON-ready result (``env``, ``peaks``, ``ops`` rows, ``train`` rows)."""
    from ..backend import resolve_backend

    torch = import_torch() if use_torch else None
    backends = ["numpy", "cupy"] if backend == "auto" and cupy_status()[0] else [resolve_backend(backend)]
    notes = []
    if use_torch and torch is None:
        notes.append("torch is not installed: the torch columns are blank")
    elif not use_torch:
        notes.append("--no-torch: the torch columns are blank")
    if quick:
        notes.append(f"--quick: warm-up {QUICK['warmup_s'] * 1e3:g} ms and {QUICK['min_time_s'] * 1e3:g} ms of "
                     f"samples per measurement (not the default 25 ms and 200 ms): a first look, not a result")
    if suite in ("ops", "all"):
        notes.append(f"ours and torch timed in {processes} worker processes each, alternating (a case's samples "
                     f"pooled; flags: noisy = IQR > 10 % of the median, drift = the last third's median 10 % off "
                     f"the first's, processes = their medians 10 % apart)" if processes else
                     "--processes 0: ours and torch timed in this process, one after the other")
    if "cupy" not in backends:
        notes.append(f"no GPU columns: {cupy_status()[1]}" if backend != "numpy" else "--backend numpy")
        if cuda_graph:
            notes.append("--cuda-graph: no GPU in this run, so no graph replays")
    devices = ["cpu" if b == "numpy" else "gpu" for b in backends]
    # as scratchllm's GPT does on the CPU (backend.tune_host_allocator): freed large blocks are reused
    malloc_tuned = tune_host_allocator() if "numpy" in backends else False
    result = {"schema": 2, "command": " ".join(["scratchllm", "bench", *(argv or [])]), "suite": suite,
              "dtype": str(dtype), "backends": backends, "env": environment(torch), "notes": notes}
    result["env"]["host_malloc_tuned"] = malloc_tuned
    busy = result["env"]["background_cpu_busy_pct"]
    if busy is not None and busy > 10:
        notes.append(f"the CPUs were {busy:.0f}% busy with other work when the run started: expect noisy numbers")
    load = OtherLoad().start()
    result["peaks"] = peaks or measure_peaks(devices, dtype, torch)
    if peaks and peaks.get("from"):
        notes.append(f"ceilings taken from {peaks['from']}, not measured in this run")
    if suite in ("ops", "all"):
        timing = {**(QUICK if quick else {}), **({"graph": True} if cuda_graph else {})}
        result["ops"] = bench_ops.run(shapes, ops, backends, dtype, repeats, batch, torch, flush_l2,
                                      result["peaks"], progress, registry, notes, timing, processes, impls)
    if suite in ("train", "all"):
        result["train"] = bench_train.run(backends, train_configs, rounds, steps, torch, result["peaks"],
                                          progress, notes)
    busy = result["env"]["others_cpu_busy_pct_during_run"] = load.pct()
    if busy is not None and busy > 10:
        notes.append(f"other processes used {busy:.0f}% of the CPUs during the run: expect noisy numbers")
    return result


# ---------------------------------------------------------------------------------------------- output
def _fmt(v, spec=".3g", blank=""):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return blank
    return format(v, spec)


def _ms(t):
    return "" if not t else f"{_fmt(t['median_ms'], '.4g')} ± {_fmt(t['iqr_ms'], '.2g')}"


def _gpu_line(env) -> str:
    gpu = env.get("gpu")
    if not gpu:
        return f"none ({env['cupy_reason']})"
    smi, tf = gpu.get("nvidia_smi") or {}, env.get("tf32") or {}
    clocks = (f"SM clock {smi['clocks.sm']} of {smi.get('clocks.max.sm', '?')} MHz, memory {smi.get('clocks.mem')} "
              f"MHz, {smi.get('pstate', '')}" if "clocks.sm" in smi else f"max SM clock {gpu.get('max_clock_mhz')} MHz")
    return (f"{gpu.get('name')}, driver {smi.get('driver_version', gpu.get('cuda_driver'))}, CUDA runtime "
            f"{gpu.get('cuda_runtime')}, {clocks}; TF32: CuPy {tf.get('cupy')}, torch matmul "
            f"{tf.get('torch_matmul')} (precision {tf.get('torch_float32_matmul_precision')})")


def markdown(result) -> str:
    """The whole result as markdown: environment, peaks, op tables per shape set, training-step table."""
    env, peaks = result["env"], result["peaks"]
    lines = [f"`{result['command']}` — commit {env['git_commit'] or '?'}, {env['time_utc']}", "",
             f"- CPU: {env['cpu']}, {env['cpu_count']} CPUs (affinity {env['cpu_affinity']}), "
             f"load {env['load_avg_1m']}; other processes' CPU use: {env['background_cpu_busy_pct']}% before the "
             f"run, {env.get('others_cpu_busy_pct_during_run')}% during it; glibc malloc thresholds raised as "
             f"scratchllm's GPT does: {env.get('host_malloc_tuned')}",
             f"- numpy {env['numpy']} ({env['blas']}, threads "
             f"{env['blas_threads'] or env['thread_env'] or 'default: one per CPU'}); scratchllm threads "
             f"{env.get('scratchllm_threads')} (batch shards, op pieces); "
             f"torch {env['torch'] or '-'} (threads {env['torch_threads'] or '-'}), python {env['python']}",
             f"- CPU kernels: {env.get('cpu_kernels', '-')}; GEMM in batch shards: {env.get('shard_gemm', '-')}",
             f"- GPU: {_gpu_line(env)}"]
    for dev in ("cpu", "gpu"):
        if dev in peaks:
            p = peaks[dev]
            parts = ", ".join(f"{k.replace('_gflops', '')} {v:.1f} GFLOP/s" for k, v in p.items()
                              if k.endswith("gemm_gflops") and v)
            if "levels" in p:
                bw = "; ".join(f"{lv} ({v['bytes'] / 2**20:.2g} MB per array) copy {v['copy_gbs']:.1f}, add "
                               f"{v['add_gbs']:.1f} GB/s" for lv, v in p["levels"].items())
                lines.append(f"- {dev.upper()} ceilings ({peaks['dtype']}, medians, threads: {p.get('threads')}): "
                             f"{parts} (GEMM {p['gemm_n']}³); STREAM {bw}. A row's % is of the GEMM peak (F) or of "
                             f"the bandwidth of the level its working set fits in (B)")
            else:
                lines.append(f"- {dev.upper()} peaks ({peaks['dtype']}): {parts} (GEMM {p['gemm_n']}³); copy "
                             f"{p['peak_gbs']:.1f} GB/s ({p['copy_mb']} MB, read + write)")
    lines += [f"- note: {n}" for n in result["notes"]]
    if result.get("ops"):
        lines += ["", ops_markdown(result["ops"])]
    if result.get("train"):
        train_markdown = bench_train.train_markdown
        lines += ["", train_markdown(result["train"])]
    return "\n".join(lines) + "\n"


def write_json(result, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
        f.write("\n")


def command_line(args) -> list:
    """The options of a ``scratchllm bench`` namespace as a canonical argument list (recorded in the output)."""
    argv = []
    skip = {"ops": ("configs", "rounds", "steps"),
            "train": ("shapes", "ops", "repeats", "batch", "flush_l2", "processes", "impls", "cuda_graph")}
    for key, value in vars(args).items():
        if key in ("func", "command", "compare", "no_progress", *skip.get(args.suite, ())) or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return argv


def set_threads(n: int) -> None:
    """Every thread pool at ``n``: the environment (which worker processes inherit) and, in this process,
    BLAS through threadpoolctl and torch's intra-op pool."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n)
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def check_args(args) -> None:
    """ValueError for an unknown op or config or a count below its least; op aliases resolved (in place)."""
    from ..ops import ALIASES, OPS, resolve

    bad = [n for n in args.ops or [] if n not in OPS and n not in ALIASES]
    if bad:
        raise ValueError(f"unknown op {bad[0]!r}; choose from {', '.join(OPS)}")
    args.ops = args.ops and [resolve(n) for n in args.ops]
    bad = [n for n in args.configs or [] if n not in bench_train.TRAIN_CONFIGS]
    if bad:
        raise ValueError(f"unknown config {bad[0]!r}; choose from {', '.join(bench_train.TRAIN_CONFIGS)}")
    for name, lo in (("repeats", 3), ("batch", 1), ("rounds", 1), ("steps", 1), ("processes", 0), ("threads", 1)):
        value = getattr(args, name)
        if value is not None and value < lo:
            raise ValueError(f"--{name} must be >= {lo}; got {value}")


def cli_run(args) -> int:
    """``scratchllm bench``: run, print the markdown, write --json/--markdown/--plots. Returns the exit code."""
    if getattr(args, "threads", None):
        set_threads(args.threads)
    peaks = None
    if args.peaks:  # the denominators of an earlier run, so that two runs' % columns compare
        with open(args.peaks) as f:
            earlier = json.load(f)
        peaks = {**earlier["peaks"], "from": f"{args.peaks} (commit {earlier['env'].get('git_commit')}, "
                                             f"{earlier['env'].get('time_utc')})"}
    result = run_bench(args.suite, args.shapes, args.ops, args.backend, args.dtype, args.repeats, args.batch,
                       not args.no_torch, args.flush_l2, args.configs, args.rounds, args.steps,
                       progress=not args.no_progress, argv=command_line(args), quick=args.quick,
                       processes=args.processes, peaks=peaks, impls=args.impls, cuda_graph=args.cuda_graph)
    text = markdown(result)
    print(text)
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.json:
        write_json(result, args.json)
    if args.plots:
        from .plots import make_plots
        for path in make_plots(result, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    failed = [r["op"] for r in result.get("ops", []) if not r["check"]["ok"]]
    failed += [r["config"] for r in result.get("train", []) if not r["check"]["ok"]]
    if failed:
        print(f"scratchllm bench: correctness check FAILED for {', '.join(sorted(set(failed)))}", file=sys.stderr)
    return 1 if failed else 0
