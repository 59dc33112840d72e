"""Run under mpirun by tests/parallel/test_mpi.py (or alone, one process): a few AdamW steps of a small GPT in
float64 with dropout and ignored targets, the global batch the same on every rank; rank 0 (or the lone process)
writes the losses and the final parameters to the .npz path given."""

import sys

import numpy as np

from scratchllm.models import GPT, GPTConfig
from scratchllm.optim import AdamW, clip_grad_norm, decay_groups
from scratchllm.parallel.mpi import MPIDataParallel, world


def main(path, rank_seeds=False, dtype="float64", steps=4):
    """``rank_seeds``: each rank starts from its own random parameters (rank 0's are broadcast: the result must
    not change)."""
    cfg = GPTConfig(vocab_size=23, block_size=12, n_layer=2, n_head=2, n_embd=8, dropout=0.1)
    comm = world()
    model = GPT(cfg, seed=7 + (comm.Get_rank() if comm is not None and rank_seeds else 0), dtype=dtype)
    runner = MPIDataParallel(model, comm) if comm is not None else model
    opt = AdamW(decay_groups(model.params, 0.1), lr=1e-2)
    rng = np.random.default_rng(3)
    losses = []
    for step in range(steps):
        idx, targets = rng.integers(0, 23, (5, 12)), rng.integers(0, 23, (5, 12))
        targets[1, :4] = -1
        targets[3] = -1  # a whole row ignored
        _, loss, cache = runner.forward(idx, targets)
        grads = runner.backward(cache)
        clip_grad_norm(grads, 0.5)
        opt.step(grads)
        losses.append(float(loss))
    if comm is None or comm.Get_rank() == 0:
        np.savez(path, losses=np.array(losses), **{k: np.asarray(v) for k, v in model.params.items()})


if __name__ == "__main__":
    main(sys.argv[1], rank_seeds="--rank-seeds" in sys.argv[2:])
