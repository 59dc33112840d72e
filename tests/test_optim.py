"""Optimizers: parity with torch.optim, exact state round trips, properties. (Bad arguments:
test_optim_validation.py; gradient clipping and the lr schedule: test_optim_utils.py; the flat fast path:
test_optim_base.py.)"""

import json

import numpy as np
import pytest

from scratchllm.optim import SGD, Adagrad, Adam, AdamW, clip_grad_norm, decay_groups, get_lr
from tests.optim_cases import ALL_IDS, ALL_OPTIONS, SHAPES, make_grads, make_params, to_disk_and_back

MAX_REL = 1e-10


def max_rel_diff(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300), initial=0.0))


def run_ours(cls, kwargs, grads_list, params=None, groups=None):
    params = make_params() if params is None else params
    opt = cls(params if groups is None else groups(params), **kwargs)
    for g in grads_list:
        opt.step(g)
    return params, opt


def run_torch(torch, cls, kwargs, grads_list, groups=None):
    tp = {n: torch.tensor(p) for n, p in make_params().items()}
    spec = list(tp.values()) if groups is None else [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [tp[n] for n in g["params"]]}
        for g in groups(make_params())]
    opt = getattr(torch.optim, cls.__name__)(spec, foreach=False, **kwargs)
    for grads in grads_list:
        for n, t in tp.items():
            t.grad = None if grads.get(n) is None else torch.tensor(grads[n])
        opt.step()
    return tp, opt


def assert_matches_torch(torch, cls, kwargs, groups=None):
    grads = make_grads()
    ours, opt = run_ours(cls, kwargs, grads, groups=groups)
    theirs, topt = run_torch(torch, cls, kwargs, grads, groups=groups)
    sd = opt.state_dict()
    worst = 0.0
    for n, t in theirs.items():
        worst = max(worst, max_rel_diff(ours[n], t.numpy()))
        for key, v in topt.state[t].items():  # same buffer names and step counts as torch
            if key == "step":
                assert sd["step"][n] == int(v)
            elif v is not None:
                worst = max(worst, max_rel_diff(sd["state"][f"{key}.{n}"], v.numpy()))
    assert worst <= MAX_REL, f"{cls.__name__}{kwargs}: max relative difference {worst:.3g}"
    return worst


CASES = {
    SGD: [{}, dict(lr=0.05), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, dampening=0.3),
          dict(lr=0.05, momentum=0.9, nesterov=True), dict(lr=0.05, weight_decay=0.1),
          dict(lr=0.05, maximize=True), dict(lr=0.05, momentum=0.8, dampening=0.1, weight_decay=0.05, maximize=True),
          dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.01, maximize=True)],
    Adam: [{}, dict(lr=0.01), dict(lr=0.01, betas=(0.8, 0.99)), dict(lr=0.01, betas=(0.3, 0.5)),
           dict(lr=0.01, eps=1e-3), dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, amsgrad=True),
           dict(lr=0.01, maximize=True),
           dict(lr=0.02, betas=(0.5, 0.9), eps=1e-4, weight_decay=0.05, amsgrad=True, maximize=True)],
    Adagrad: [{}, dict(lr=0.1, lr_decay=0.01), dict(lr=0.1, initial_accumulator_value=0.5),
              dict(lr=0.1, weight_decay=0.1), dict(lr=0.1, eps=1e-3), dict(lr=0.1, maximize=True),
              dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2, weight_decay=0.05, eps=1e-4, maximize=True)],
}
CASES[AdamW] = CASES[Adam] + [dict(lr=0.01, weight_decay=0.0)]
PARITY = [(cls, kw) for cls, kws in CASES.items() for kw in kws]


@pytest.mark.torch
@pytest.mark.parametrize("cls,kwargs", PARITY, ids=[f"{c.__name__}-{kw}" for c, kw in PARITY])
def test_matches_torch(cls, kwargs):
    torch = pytest.importorskip("torch")
    assert_matches_torch(torch, cls, kwargs)


GROUPS = [
    (AdamW, dict(lr=0.01), lambda p: decay_groups(p, 0.1)),
    (Adam, dict(lr=0.01, amsgrad=True), lambda p: decay_groups(p, 0.05)),
    (SGD, dict(lr=0.05, momentum=0.9), lambda p: decay_groups(p, 0.1)),
    (Adagrad, dict(lr=0.1), lambda p: decay_groups(p, 0.1)),
    (SGD, dict(lr=0.05), lambda p: [{"params": {"w": p["w"], "t": p["t"]}, "momentum": 0.5, "nesterov": True},
                                    {"params": {"b": p["b"], "s": p["s"]}, "lr": 0.01, "weight_decay": 0.2}]),
]


@pytest.mark.torch
@pytest.mark.parametrize("cls,kwargs,groups", GROUPS, ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(GROUPS)])
def test_param_groups_match_torch(cls, kwargs, groups):
    torch = pytest.importorskip("torch")
    assert_matches_torch(torch, cls, kwargs, groups=groups)


def test_decay_groups_is_nanogpts_split():
    p = make_params()
    g = decay_groups(p, 0.1)
    assert [list(x["params"]) for x in g] == [["w", "t"], ["b", "s"]]
    assert [x["weight_decay"] for x in g] == [0.1, 0.0]
    assert all(g[0]["params"][n] is p[n] for n in ("w", "t"))


@pytest.mark.torch
def test_nanogpt_training_loop_matches_torch():
    """AdamW on decay groups + clip_grad_norm + get_lr through the lr setter, as nanoGPT's train.py does."""
    torch = pytest.importorskip("torch")
    sched = dict(learning_rate=6e-3, warmup_iters=10, lr_decay_iters=50, min_lr=6e-4)
    grads = make_grads()
    params = make_params()
    opt = AdamW(decay_groups(params, 0.1), lr=sched["learning_rate"], betas=(0.9, 0.95))
    tp = {n: torch.tensor(p) for n, p in make_params().items()}
    topt = torch.optim.AdamW([{"params": [tp["w"], tp["t"]], "weight_decay": 0.1},
                              {"params": [tp["b"], tp["s"]], "weight_decay": 0.0}],
                             lr=sched["learning_rate"], betas=(0.9, 0.95), foreach=False)
    for it, g in enumerate(grads):
        g = {n: a.copy() for n, a in g.items() if a is not None}
        opt.lr = get_lr(it, **sched)
        norm = clip_grad_norm(g, 1.0)
        opt.step(g)
        for n, t in tp.items():
            t.grad = None if grads[it].get(n) is None else torch.tensor(grads[it][n])
        tnorm = torch.nn.utils.clip_grad_norm_(list(tp.values()), 1.0)
        for group in topt.param_groups:
            group["lr"] = get_lr(it, **sched)
        topt.step()
        assert abs(norm - float(tnorm)) <= 1e-12 * float(tnorm)
    for n, t in tp.items():
        assert max_rel_diff(params[n], t.numpy()) <= MAX_REL


# ---------------------------------------------------------------- state_dict round trip

ROUND_TRIP = [
    (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), None),
    (SGD, dict(lr=0.05), None),
    (Adam, dict(lr=0.01, amsgrad=True, maximize=True), None),
    (AdamW, dict(lr=0.01, betas=(0.9, 0.95)), lambda p: decay_groups(p, 0.1)),
    (Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.3), None),
]



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,kwargs,groups", ROUND_TRIP, ids=[c.__name__ for c, _, _ in ROUND_TRIP])
def test_state_dict_round_trip_is_exact(cls, kwargs, groups, dtype):
    grads = make_grads(30, dtype=dtype)
    k = 12
    params = make_params(dtype=dtype)
    opt = cls(params if groups is None else groups(params), **kwargs)
    for g in grads[:k]:
        opt.step(g)
    sd = opt.state_dict()
    saved = to_disk_and_back(sd)
    snapshot = {n: p.copy() for n, p in params.items()}
    for g in grads[k:]:  # the uninterrupted run
        opt.step(g)
    for key, a in saved["state"].items():  # state_dict() gave copies, not views of the live buffers
        np.testing.assert_array_equal(sd["state"][key], a)

    resumed = {n: p.copy() for n, p in snapshot.items()}
    opt2 = cls(resumed if groups is None else groups(resumed), lr=0.5)  # hyper-parameters come from the load
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == kwargs["lr"]
    for g in grads[k:]:
        opt2.step(g)
    for n in params:
        assert resumed[n].dtype == dtype
        np.testing.assert_array_equal(resumed[n], params[n])
    end1, end2 = opt.state_dict(), opt2.state_dict()
    assert end1["step"] == end2["step"] and end1["param_groups"] == end2["param_groups"]
    assert set(end1["state"]) == set(end2["state"])
    for key in end1["state"]:
        assert end2["state"][key].dtype == dtype
        np.testing.assert_array_equal(end1["state"][key], end2["state"][key])


def test_state_dict_is_plain():
    params = make_params()
    opt = Adam(params, lr=0.01)
    opt.step(make_grads(1)[0])
    sd = opt.state_dict()
    assert sd["optimizer"] == "Adam" and sd["step"] == {"w": 1, "b": 1, "s": 1, "t": 1}
    assert sd["param_groups"] == [{"params": ["w", "b", "s", "t"], "lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8,
                                   "weight_decay": 0.0, "amsgrad": False, "maximize": False}]
    assert sorted(sd["state"]) == sorted(f"{b}.{n}" for b in ("exp_avg", "exp_avg_sq") for n in SHAPES)
    json.dumps({k: v for k, v in sd.items() if k != "state"})


def _corrupt(sd, how):
    sd = to_disk_and_back(sd)
    if how == "rename":
        sd["state"]["exp_avg.zz"] = sd["state"].pop("exp_avg.w")
    elif how == "unknown_buffer":
        sd["state"]["momentum_buffer.w"] = sd["state"]["exp_avg.w"]
    elif how == "shape":
        sd["state"]["exp_avg_sq.b"] = np.zeros(6)
    elif how == "missing_buffer":
        del sd["state"]["exp_avg.t"]
    elif how == "type":
        sd["optimizer"] = "AdamW"
    elif how == "group_names":
        sd["param_groups"][0]["params"] = ["w", "b", "s", "x"]
    elif how == "groups":
        sd["param_groups"].append(dict(sd["param_groups"][0]))
    elif how == "step":
        sd["step"] = {"w": 1}
    elif how == "hyper":
        sd["param_groups"][0]["lr"] = -1.0
    elif how == "keys":
        del sd["step"]
    return sd


@pytest.mark.parametrize("how,match", [
    ("rename", "exp_avg.zz"), ("unknown_buffer", "momentum_buffer.w"), ("shape", "shape"),
    ("missing_buffer", "lacks"), ("type", "AdamW"), ("group_names", "names differ"), ("groups", "param groups"),
    ("step", "'step'"), ("hyper", "lr"), ("keys", "keys")])
def test_load_state_dict_errors(how, match):
    params = make_params()
    opt = Adam(params, lr=0.01)
    for g in make_grads(3):
        opt.step(g)
    bad = _corrupt(opt.state_dict(), how)
    fresh = Adam(make_params(), lr=0.02)
    before = fresh.state_dict()
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(bad)
    after = fresh.state_dict()  # a failed load changes nothing
    assert after["param_groups"] == before["param_groups"] and after["step"] == before["step"] and not after["state"]


# ---------------------------------------------------------------- properties



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_adam_first_step_moves_each_weight_by_lr(cls, dtype):
    rng = np.random.default_rng(0)
    params = make_params(dtype=dtype)
    before = {n: p.copy() for n, p in params.items()}
    grads = {n: np.asarray(rng.choice([-1, 1], size=s) * rng.uniform(0.01, 100, size=s), dtype=dtype)
             for n, s in SHAPES.items()}
    lr = 1e-3
    cls(params, lr=lr, weight_decay=0.0).step(grads)
    for n in params:
        delta = params[n].astype(np.float64) - before[n]
        np.testing.assert_allclose(np.abs(delta), lr, rtol=1e-3)
        assert np.all(np.sign(delta) == -np.sign(grads[n]))


@pytest.mark.parametrize("cls,kwargs", ALL_OPTIONS, ids=ALL_IDS)
def test_grads_are_never_mutated(cls, kwargs):
    params = make_params()
    opt = cls(params, **kwargs)
    for g in make_grads(8):
        copies = {n: None if a is None else a.copy() for n, a in g.items()}
        opt.step(g)
        for n, a in g.items():
            assert (a is None and copies[n] is None) or np.array_equal(a, copies[n])


@pytest.mark.parametrize("grad_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,kwargs", ALL_OPTIONS, ids=ALL_IDS)
def test_params_keep_identity_and_dtype(cls, kwargs, grad_dtype):
    params = make_params(dtype=np.float32)
    arrays = dict(params)
    start = {n: p.copy() for n, p in params.items()}
    opt = cls(params, **kwargs)
    for g in make_grads(5, dtype=grad_dtype):
        opt.step(g)
    for n, p in params.items():
        assert p is arrays[n] and opt.param_groups[0]["params"][n] is p
        assert p.dtype == np.float32 and not np.array_equal(p, start[n])  # updated in place
    assert all(a.dtype == np.float32 for a in opt.state_dict()["state"].values())


@pytest.mark.parametrize("cls,kwargs", ALL_OPTIONS, ids=ALL_IDS)
def test_missing_or_none_grads_skip_the_parameter(cls, kwargs):
    params = make_params()
    frozen = {n: params[n].copy() for n in ("b", "s")}
    opt = cls(params, **kwargs)
    for g in make_grads(5):
        opt.step({"w": g["w"], "t": g["t"], "b": None})
    for n in frozen:
        np.testing.assert_array_equal(params[n], frozen[n])
    assert opt.state_dict()["step"] == {"w": 5, "b": 0, "s": 0, "t": 5}


def test_step_validates_grads_before_touching_anything():
    params = make_params()
    start = {n: p.copy() for n, p in params.items()}
    opt = Adam(params)
    g = make_grads(1)[0]
    with pytest.raises(ValueError, match="zz"):
        opt.step({**g, "zz": np.zeros(3)})
    with pytest.raises(ValueError, match="'t'"):
        opt.step({**g, "t": np.zeros((3, 2, 2))})
    with pytest.raises(ValueError, match="grads"):
        opt.step([g["w"]])
    for n in params:
        np.testing.assert_array_equal(params[n], start[n])
    assert opt.state_dict()["step"] == dict.fromkeys(SHAPES, 0)


def test_lr_property_sets_every_group():
    params = make_params()
    opt = SGD(decay_groups(params, 0.1), lr=0.1)
    assert opt.lr == 0.1
    opt.lr = 0.25
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25] and opt.lr == 0.25
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    opt.param_groups[1]["lr"] = 0.5
    with pytest.raises(ValueError, match="different lr"):
        _ = opt.lr


@pytest.mark.gpu
@pytest.mark.parametrize("cls,kwargs", ALL_OPTIONS, ids=ALL_IDS)
def test_cupy_matches_numpy(cls, kwargs):
    import cupy

    from scratchllm.backend import to_numpy
    grads = make_grads(10)
    host, _ = run_ours(cls, kwargs, grads)
    dev = {n: cupy.asarray(p) for n, p in make_params().items()}
    opt = cls(dev, **kwargs)
    for g in grads:
        opt.step({n: None if a is None else cupy.asarray(a) for n, a in g.items()})
    for n in host:
        assert isinstance(dev[n], cupy.ndarray)
        np.testing.assert_allclose(to_numpy(dev[n]), host[n], rtol=1e-12, atol=1e-14)
    sd = opt.state_dict()  # round trip through host arrays, as a checkpoint does
    resumed = {n: p.copy() for n, p in dev.items()}
    opt2 = cls(resumed, **kwargs)
    opt2.load_state_dict(to_disk_and_back({**sd, "state": {k: to_numpy(v) for k, v in sd["state"].items()}}))
    g = {n: cupy.asarray(a) for n, a in make_grads(1, seed=9)[0].items() if a is not None}
    opt.step(g)
    opt2.step(g)
    for n in dev:
        assert bool((dev[n] == resumed[n]).all())
    assert all(isinstance(v, cupy.ndarray) for v in opt2.state_dict()["state"].values())
    on_host = {n: to_numpy(a) for n, a in g.items()}
    total = clip_grad_norm(g, 0.1)  # on CuPy a 0-d device array (no host sync)
    assert isinstance(total, cupy.ndarray) and total.shape == ()
    assert float(total) == pytest.approx(clip_grad_norm(on_host, 0.1), rel=1e-12)
    for n in g:
        np.testing.assert_allclose(to_numpy(g[n]), on_host[n], rtol=1e-12)
