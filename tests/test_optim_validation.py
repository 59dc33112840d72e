"""Optimizer arguments: bad hyper-parameters and params raise, naming the argument, as torch.optim rejects them;
the defaults are torch's."""

import numpy as np
import pytest

from scratchllm import optim
from scratchllm.optim import SGD, Adagrad, Adam, AdamW
from tests.optim_cases import make_params

BAD = [
    (SGD, dict(lr=-0.1), "lr"), (SGD, dict(lr=float("nan")), "lr"), (SGD, dict(lr="big"), "lr"),
    (SGD, dict(momentum=-0.5), "momentum"), (SGD, dict(weight_decay=-1), "weight_decay"),
    (SGD, dict(nesterov=True), "nesterov"), (SGD, dict(momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (SGD, dict(maximize="no"), "maximize"), (SGD, dict(dampening=None), "dampening"),
    (Adam, dict(lr=-1e-3), "lr"), (Adam, dict(betas=(1.0, 0.999)), r"betas\[0\]"),
    (Adam, dict(betas=(-0.1, 0.999)), r"betas\[0\]"), (Adam, dict(betas=(0.9, 1.5)), r"betas\[1\]"),
    (Adam, dict(betas=(0.9,)), "betas"), (Adam, dict(betas=0.9), "betas"), (Adam, dict(eps=-1e-8), "eps"),
    (Adam, dict(weight_decay=-0.1), "weight_decay"), (Adam, dict(amsgrad="yes"), "amsgrad"),
    (AdamW, dict(betas=(0.9, 1.0)), r"betas\[1\]"), (AdamW, dict(weight_decay=-0.01), "weight_decay"),
    (AdamW, dict(lr=-1.0), "lr"), (Adagrad, dict(lr=-0.1), "lr"), (Adagrad, dict(lr_decay=-0.1), "lr_decay"),
    (Adagrad, dict(initial_accumulator_value=-1), "initial_accumulator_value"), (Adagrad, dict(eps=-1), "eps"),
    (Adagrad, dict(weight_decay=-1), "weight_decay"), (Adagrad, dict(maximize=2), "maximize"),
]


@pytest.mark.parametrize("cls,kwargs,match", BAD, ids=[f"{c.__name__}-{kw}" for c, kw, _ in BAD])
def test_bad_hyper_parameters_raise(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(make_params(), **kwargs)


@pytest.mark.torch
def test_torch_rejects_what_we_reject():
    torch = pytest.importorskip("torch")
    for cls, kwargs, _ in BAD:
        if any(k in ("maximize", "amsgrad") or not isinstance(v, (bool, float, int, tuple)) or v != v
               or (k == "betas" and (not isinstance(v, tuple) or len(v) != 2)) for k, v in kwargs.items()):
            continue  # wrong types and NaN, which torch leaves unchecked or to Python's own errors
        with pytest.raises(ValueError):
            getattr(torch.optim, cls.__name__)([torch.zeros(2)], **kwargs)


@pytest.mark.parametrize("params,match", [
    ({}, "empty"), ([], "empty"), ({"i": np.arange(3)}, "floating-point"),
    ([{"params": {"a": np.zeros(2)}, "weight_decy": 0.1}], "weight_decy"),
    ([{"params": {"a": np.zeros(2)}, "lr": -1}], "lr"),
    ([{"params": {"a": np.zeros(2)}}, {"params": {"a": np.ones(2)}}], "unique"),
    ([{"weight_decay": 0.1}], "'params'"),
])
def test_bad_params_raise(params, match):
    with pytest.raises(ValueError, match=match):
        SGD(params)


def test_same_array_twice_raises():
    a = np.zeros(3)
    with pytest.raises(ValueError, match="twice"):
        Adam({"a": a, "b": a})


@pytest.mark.torch
def test_defaults_are_torchs():
    torch = pytest.importorskip("torch")
    for cls in (SGD, Adam, AdamW, Adagrad):
        ours = cls(make_params()).param_groups[0]
        theirs = getattr(torch.optim, cls.__name__)([torch.zeros(2)]).param_groups[0]
        for k, v in ours.items():
            if k != "params":
                assert v == theirs[k], (cls.__name__, k)
    assert set(optim.__all__) >= {"SGD", "Adam", "AdamW", "Adagrad", "clip_grad_norm", "get_lr", "decay_groups"}
