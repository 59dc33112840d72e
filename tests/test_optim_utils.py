"""clip_grad_norm (torch's clip_grad_norm_) and get_lr (nanoGPT's schedule)."""

import math

import numpy as np
import pytest

from scratchllm.optim import clip_grad_norm, get_lr
from tests.optim_cases import make_grads

@pytest.mark.torch
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("factor", [0.3, 1.0, 3.0])  # clipped, at the limit, not clipped
def test_clip_grad_norm_matches_torch(factor, dtype, rtol):
    torch = pytest.importorskip("torch")
    grads = {n: a for n, a in make_grads(1, dtype=dtype)[0].items() if a is not None}
    true_norm = math.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in grads.values()))
    max_norm = factor * true_norm
    tensors = []
    for a in grads.values():
        t = torch.zeros(a.shape, dtype=torch.float64 if dtype == np.float64 else torch.float32)
        t.grad = torch.tensor(a)
        tensors.append(t)
    original = {n: a.copy() for n, a in grads.items()}
    total = clip_grad_norm(grads, max_norm)
    ttotal = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    assert isinstance(total, float)
    assert abs(total - float(ttotal)) <= rtol * float(ttotal)
    for (n, a), t in zip(grads.items(), tensors):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=rtol, atol=0)
        if factor == 3.0:
            np.testing.assert_array_equal(a, original[n])  # not clipped: untouched
    if factor == 0.3:
        assert abs(math.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in grads.values())) - max_norm) \
            <= 1e-5 * max_norm


def test_clip_grad_norm_edge_cases():
    assert clip_grad_norm({}, 1.0) == 0.0 and clip_grad_norm({"a": None}, 1.0) == 0.0
    g = {"a": np.array([3.0, 4.0]), "b": None, "z": np.zeros(2)}
    assert clip_grad_norm(g, 1.0) == 5.0
    np.testing.assert_allclose(g["a"], [3 / (5 + 1e-6), 4 / (5 + 1e-6)], rtol=1e-15)
    assert clip_grad_norm([np.zeros(3)], 1.0) == 0.0
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(g, -1.0)


def nanogpt_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT train.py's get_lr, transcribed (its globals made arguments)."""
    # 1) linear warmup for warmup_iters steps
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    # 2) if it > lr_decay_iters, return min learning rate
    if it > lr_decay_iters:
        return min_lr
    # 3) in between, use cosine decay down to min learning rate
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # coeff ranges 0..1
    return min_lr + coeff * (learning_rate - min_lr)


@pytest.mark.parametrize("cfg", [dict(learning_rate=6e-4, warmup_iters=2000, lr_decay_iters=600000, min_lr=6e-5),
                                 dict(learning_rate=1e-3, warmup_iters=100, lr_decay_iters=5000, min_lr=1e-4),
                                 dict(learning_rate=1e-2, warmup_iters=0, lr_decay_iters=10, min_lr=0.0)])
def test_get_lr_is_nanogpts(cfg):
    w, d, lr, mn = cfg["warmup_iters"], cfg["lr_decay_iters"], cfg["learning_rate"], cfg["min_lr"]
    its = sorted({0, 1, max(w - 1, 0), w, w + 1, (w + d) // 2, d - 1, d, d + 1, 10 * d}
                 | set(range(0, d + 50, max(1, d // 97))))
    for it in its:
        assert get_lr(it, **cfg) == nanogpt_get_lr(it, **cfg), it
    assert get_lr(0, **cfg) == (lr / (w + 1) if w else lr)
    assert math.isclose(get_lr(w, **cfg), lr, rel_tol=1e-15)  # warmup end: the peak
    assert get_lr(d, **cfg) == mn and get_lr(d + 1, **cfg) == mn and get_lr(10**9, **cfg) == mn
    values = [get_lr(it, **cfg) for it in its]
    peak = its.index(w)
    assert all(a <= b for a, b in zip(values[:peak], values[1:peak + 1]))  # warmup rises
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1:]))  # then decays


def test_get_lr_without_decay_span():
    assert get_lr(5, 1.0, 5, 5, 0.1) == 0.1 and get_lr(4, 1.0, 5, 5, 0.1) == 5 / 6
