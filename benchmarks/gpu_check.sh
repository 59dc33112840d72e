#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): run it on a machine with a GPU, without the network, as
#
#     benchmarks/gpu_check.sh OUT_DIR
#
# 1. records the machine: nvidia-smi, `scratchllm info`, package versions            -> OUT_DIR/env.txt ...
# 2. stops there, with exit status 0 and one line saying why, when no GPU is usable
# 3. python -m pytest -q -m gpu tests (kernels vs NumPy, gradcheck on CuPy, a GPT step vs NumPy, no host sync)
# 4. scratchllm bench: every implementation of each op side by side (--impls: the CuPy textbook, the CUDA
#    kernels, torch CUDA when torch sees the GPU) with CUDA-graph replays, and the training step
# 5. its own timing of the kernels and of a GPT-2-small training step: kernels on, off, and with CUPY_TF32=1
# 6. a short end-to-end `scratchllm train --backend=cupy`
#
# Every step runs under `timeout` and the whole script keeps within GPU_CHECK_BUDGET_S seconds (default 540,
# 9 minutes: under a device session's 10-minute command limit); a step that fails or times out is recorded in OUT_DIR/summary.txt and the next one
# still runs. Exit status: 0 when every step that ran passed (or no GPU was usable), 1 otherwise.
set -uo pipefail

if [[ $# -ne 1 || -z "$1" ]]; then
    echo "usage: benchmarks/gpu_check.sh OUT_DIR" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
START=$SECONDS
FAILED=0
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1  # nothing here may reach the network
export PYTHONUNBUFFERED=1

log() { echo "[gpu_check +$((SECONDS - START))s] $*" | tee -a "$OUT/summary.txt"; }

# step NAME MAX_SECONDS CMD...: run CMD with its output in OUT/NAME.log, bounded by MAX_SECONDS and the budget
step() {
    local name=$1 max=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if ((left < 15)); then
        log "$name: SKIPPED (time budget of ${BUDGET}s spent)"
        return 0
    fi
    ((max > left)) && max=$left
    log "$name: start (timeout ${max}s): $*"
    timeout --kill-after=10 "$max" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    if ((rc == 0)); then
        log "$name: ok"
    else
        ((rc == 124 || rc == 137)) && log "$name: TIMED OUT after ${max}s" || log "$name: FAILED (exit $rc)"
        tail -n 5 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$OUT/summary.txt"
        FAILED=1
    fi
    return 0
}

: >"$OUT/summary.txt"
log "scratchllm GPU check; results in $OUT"

# 1. the machine
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -a)"
    echo "CUPY_TF32=${CUPY_TF32:-(unset: TF32 off)}  SCRATCHLLM_KERNELS=${SCRATCHLLM_KERNELS:-(unset: on)}"
    "$PY" --version
    "$PY" -m pip list 2>/dev/null | grep -i -E "^(numpy|scipy|cupy|torch|scratchllm|nvidia-)" || true
} >"$OUT/env.txt" 2>&1
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 20 nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
    timeout 20 nvidia-smi -q >"$OUT/nvidia-smi-q.txt" 2>&1 || true
else
    echo "nvidia-smi is not on PATH" >"$OUT/nvidia-smi.txt"
fi
timeout 60 "$PY" -m scratchllm info >"$OUT/scratchllm-info.txt" 2>&1 || true

# 2. is a GPU usable at all?
reason=$(timeout 120 "$PY" -c "
from scratchllm.backend import cupy_status
from scratchllm import kernels
ok, why = cupy_status()
print(why + '; ' + kernels.status()[1])
raise SystemExit(0 if ok else 3)" 2>&1)
rc=$?
if ((rc != 0)); then
    log "no usable GPU, nothing to check: ${reason:-cupy_status did not answer (exit $rc)}"
    exit 0
fi
log "GPU: $reason"

# 3. the GPU tests
step pytest-gpu 150 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider -rs --junitxml="$OUT/pytest-gpu.xml"

# 4. the benchmark CLI: every implementation of each op side by side (the CuPy textbook, our CUDA kernels, torch
#    CUDA), GPU and host times, CUDA-graph replays; and the training step against torch CUDA
step bench-ops 200 scratchllm bench --suite ops --shapes gpt2-small --backend cupy --impls --cuda-graph \
    --processes 1 --json "$OUT/bench-ops.json" --markdown "$OUT/bench-ops.md"
step bench-train 45 scratchllm bench --suite train --backend cupy --json "$OUT/bench-train.json" \
    --markdown "$OUT/bench-train.md"

# 5. our own timing (does not depend on the bench CLI's flags)
cat >"$OUT/kernel_timing.py" <<'PYTHON'
"""Time the fused kernels against the plain CuPy ops, and a GPT-2-small training step (CUDA events)."""
import json
import math
import os
import sys

import cupy as cp
import numpy as np

from scratchllm import kernels
from scratchllm.backend import device_info
from scratchllm.kernels.dispatch import dispatched
from scratchllm.model import GPT, GPTConfig
from scratchllm.ops import OPS
from scratchllm.optim import AdamW, clip_grad_norm, decay_groups

out_path, label, what = sys.argv[1], sys.argv[2], sys.argv[3]
B, T, C, H, V = 4, 1024, 768, 12, 50257


def ms(fn, reps=5, rounds=3):
    """Best mean milliseconds per call over a few rounds (after one warm-up call)."""
    fn()
    cp.cuda.Device().synchronize()
    start, stop, best = cp.cuda.Event(), cp.cuda.Event(), math.inf
    for _ in range(rounds):
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        stop.synchronize()
        best = min(best, cp.cuda.get_elapsed_time(start, stop) / reps)
    return round(best, 4)


res = {"label": label, "kernels": kernels.status()[1], "tf32": os.environ.get("CUPY_TF32", "0") == "1",
       "device": {**device_info(), "fused_kernels": kernels.enabled()}, "shapes": dict(B=B, T=T, C=C, H=H, V=V),
       "ms": {}}
if what in ("ops", "all"):
    sizes = {"layernorm": dict(N=B * T, C=C), "gelu": dict(N=B * T, C=4 * C), "softmax": dict(B=B * H, T=T, C=T),
             "attention": dict(B=B, H=H, T=T, D=C // H), "cross_entropy": dict(B=B, T=T, V=V)}
    for name, s in sizes.items():
        op = OPS[name]
        forward, backward = dispatched(op.forward), dispatched(op.backward)  # the CUDA kernels where they run
        inputs = op.make_inputs(sizes=s, dtype="float32", xp=cp)
        out, cache = forward(*inputs)
        dout = cp.ones_like(out)
        res["ms"][name + "_forward"] = ms(lambda: forward(*inputs))
        res["ms"][name + "_backward"] = ms(lambda: backward(dout, cache))
        del inputs, out, cache, dout
if what in ("train", "all"):
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=12, n_head=H, n_embd=C), backend="cupy")
    opt = AdamW(decay_groups(model.params, 0.1), lr=6e-4, betas=(0.9, 0.95))
    rng = np.random.default_rng(0)
    x, y = (cp.asarray(rng.integers(0, V, size=(B, T))) for _ in range(2))

    def train_step():
        _, loss, cache = model.forward(x, y)
        grads = model.backward(cache)
        clip_grad_norm(grads, 1.0)
        opt.step(grads)

    step_ms = ms(train_step, reps=3, rounds=3)
    res["ms"]["gpt2_small_train_step"] = step_ms
    res["tokens_per_s"] = round(B * T / (step_ms / 1000))
    res["peak_pool_gib"] = round(cp.get_default_memory_pool().total_bytes() / 2**30, 2)
with open(out_path, "w") as f:
    json.dump(res, f, indent=1)
print(json.dumps(res["ms"], indent=1), res.get("tokens_per_s", ""))
PYTHON
step timing-kernels 40 "$PY" "$OUT/kernel_timing.py" "$OUT/timing-kernels.json" kernels all
step timing-nokernels 40 env SCRATCHLLM_KERNELS=0 "$PY" "$OUT/kernel_timing.py" "$OUT/timing-nokernels.json" \
    nokernels train
step timing-tf32 25 env CUPY_TF32=1 "$PY" "$OUT/kernel_timing.py" "$OUT/timing-tf32.json" kernels+tf32 train

# 6. end to end: the default training on CuPy, short
step train-cupy 40 scratchllm train --backend=cupy --max_iters=200 --eval_interval=100 --eval_iters=5 \
    --sample_tokens=100 --progress=false --out_dir="$OUT/train-cupy"

log "done in $((SECONDS - START))s; $([[ $FAILED == 0 ]] && echo 'every step passed' || echo 'some steps FAILED')"
exit $FAILED
