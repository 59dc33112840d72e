"""Time one training step (forward + backward + AdamW) of scratchllm against PyTorch eager, same model.

    python benchmarks/train_step.py                     # nanoGPT's CPU recipe L4 H4 C128 T64 B12 V65
    python benchmarks/train_step.py --n_layer 6 --n_head 6 --n_embd 384 --block_size 256 --batch_size 8

A/B interleaved: each round times `--steps` steps of one, then of the other; medians over rounds.
"""

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from scratchllm.model import GPT, GPTConfig
from scratchllm.optim import AdamW, clip_grad_norm, decay_groups


def main():
    ap = argparse.ArgumentParser()
    for k, v in dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65,
                     rounds=7, steps=5, warmup=3).items():
        ap.add_argument(f"--{k}", type=int, default=v)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    cfg = GPTConfig(args.vocab_size, args.block_size, args.n_layer, args.n_head, args.n_embd)
    B, T = args.batch_size, args.block_size
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))) for _ in range(4)]

    model = GPT(cfg, seed=0, dtype="float32", backend="numpy")
    opt = AdamW(decay_groups(model.params, 0.1), lr=1e-3, betas=(0.9, 0.99))

    def ours(i):
        idx, tgt = batches[i % 4]
        _, loss, cache = model.forward(idx, tgt)
        grads = model.backward(cache)
        clip_grad_norm(grads, 1.0)
        opt.step(grads)
        return loss

    runners = {"scratchllm": ours}
    try:
        import torch

        from torch_gpt import TorchGPT

        tmodel = TorchGPT(model.state_dict(), cfg.n_layer, cfg.n_head)
        topt = torch.optim.AdamW(tmodel.decay_groups(0.1), lr=1e-3, betas=(0.9, 0.99))
        tbatches = [(torch.tensor(a), torch.tensor(b)) for a, b in batches]

        def theirs(i):
            idx, tgt = tbatches[i % 4]
            loss = tmodel(idx, tgt)
            topt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 1.0)
            topt.step()
            return loss

        runners["torch"] = theirs
    except ImportError:
        torch = None

    for run in runners.values():
        for i in range(args.warmup):
            run(i)
    times = {k: [] for k in runners}
    for r in range(args.rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            for i in range(args.steps):
                run(i)
            times[name].append((time.perf_counter() - t0) / args.steps)
    res = {"config": vars(args), "machine": platform.machine(), "cpus": os.cpu_count(),
           "numpy": np.__version__, "torch": torch.__version__ if torch else None,
           "torch_threads": torch.get_num_threads() if torch else None}
    for name, ts in times.items():
        res[name] = {"median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts),
                     "iqr_ms": 1e3 * (np.percentile(ts, 75) - np.percentile(ts, 25))}
        print(f"{name:<11} median {res[name]['median_ms']:8.2f} ms/step  (min {res[name]['min_ms']:.2f}, "
              f"IQR {res[name]['iqr_ms']:.2f})")
    if "torch" in res:
        res["ratio_ours_over_torch"] = res["scratchllm"]["median_ms"] / res["torch"]["median_ms"]
        print(f"ratio scratchllm / torch eager: {res['ratio_ours_over_torch']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
