"""Parameters, gradients and option sets shared by the optimizer tests (test_optim*.py)."""

import json

import numpy as np

from scratchllm.optim import SGD, Adagrad, Adam, AdamW

SHAPES = {"w": (4, 5), "b": (5,), "s": (), "t": (2, 3, 2)}  # 2-D, 1-D, 0-D and 3-D parameters
STEPS = 60


def make_params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {n: np.asarray(rng.standard_normal(s), dtype=dtype) for n, s in SHAPES.items()}


def make_grads(steps=STEPS, seed=1, dtype=np.float64):
    """A fresh random gradient each step, with a varying scale (so AMSGrad's max matters); "b" has no gradient
    on some steps, so per-parameter step counts differ (torch: p.grad is None)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        scale = rng.uniform(0.1, 3.0)
        g = {n: np.asarray(scale * rng.standard_normal(s), dtype=dtype) for n, s in SHAPES.items()}
        if t % 7 == 3:
            g["b"] = None
        if t % 11 == 5:
            del g["s"]
        out.append(g)
    return out


def to_disk_and_back(sd):
    """What a checkpoint does: JSON for everything but the arrays, the arrays copied out (as safetensors would)."""
    meta = json.loads(json.dumps({k: v for k, v in sd.items() if k != "state"}))
    return {**meta, "state": {k: np.array(v) for k, v in sd["state"].items()}}


# every option of each optimizer at once
ALL_OPTIONS = [
    (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True)),
    (SGD, dict(lr=0.05, momentum=0.9, dampening=0.5)),
    (SGD, dict(lr=0.05)),
    (Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)),
    (AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)),
    (Adagrad, dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1, maximize=True)),
]
ALL_IDS = [f"{c.__name__}-{i}" for i, (c, _) in enumerate(ALL_OPTIONS)]
