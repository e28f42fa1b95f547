"""FOP (first-order preconditioning, Moskovitz et al. 2019): a frozen identity preconditioner is its base
optimizer bit for bit, the hypergradient is the derivative of the next loss with respect to M, masks hold,
resume is exact, FOP units never stack, and bad input is one line."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from ticketlab import models, spec as specs
from ticketlab.data import load
from ticketlab.experiments.lottery import LotterySpec
from ticketlab.sparse import Mask
from ticketlab.store import Unit
from ticketlab.train import Schedule, fit, make_optimizer
from ticketlab.train.fit import Checkpoints
from ticketlab.train.fop import FOP, side


def train_spec(optimizer, **kw):
    values = {"dataset": "synthetic", "model": "mlp", "widths": (32, 16), "optimizer": optimizer, "batch_size": 20,
              "lr": 0.05 if optimizer.endswith("sgd") else 5e-3, "steps": "60it", "eval_every": "20it", **kw}
    return specs.from_mapping(LotterySpec, values).train


def conv_and_linear(seed=0):
    """A net with every kind of tensor FOP treats: conv1d (k = 5), conv2d (k = 9), linear, biases."""
    torch.manual_seed(seed)
    return nn.ModuleDict({"c1": nn.Conv1d(2, 3, 5), "c2": nn.Conv2d(3, 4, 3), "fc": nn.Linear(7, 5)})


def loss_of(net, step):
    g = torch.Generator().manual_seed(step)
    x1, x2, x3 = torch.randn(4, 2, 9, generator=g), torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 7, generator=g)
    return net["c1"](x1).square().mean() + net["c2"](x2).tanh().mean() + net["fc"](x3).sin().sum()


@pytest.mark.parametrize("linear", ["scalar", "input", "none"])
@pytest.mark.parametrize("base,kw", [("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
                                     ("sgd", {"momentum": 0.0}), ("adam", {}), ("adam", {"weight_decay": 1e-2})])
def test_frozen_identity_preconditioner_is_the_base_optimizer_bit_for_bit(base, kw, linear):
    train = train_spec(f"fop-{base}", fop_lr=0.0, fop_linear=linear, **kw)
    reference_train = train_spec(base, **kw)
    a, b = conv_and_linear(), conv_and_linear()
    fop = make_optimizer(a.parameters(), train, torch.device("cpu"))
    plain = make_optimizer(b.parameters(), reference_train, torch.device("cpu"))   # the project's SGD / fused Adam
    assert isinstance(fop, FOP) and not isinstance(plain, FOP)
    for step in range(25):
        for net, opt in ((a, fop), (b, plain)):
            for g in opt.param_groups:
                g["lr"] = train.lr * (1 + 0.1 * (step % 3))   # a changing rate, as a schedule gives
            opt.zero_grad()
            loss_of(net, step).backward()
            opt.step()
        for (name, x), y in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(x, y), (base, kw, step, name)
    kept = [p for p in fop.state if side(p, linear)]
    assert len(kept) == (2 if linear == "none" else 3)
    assert all(torch.equal(fop.state[p]["fop_m"], torch.eye(side(p, linear))) for p in kept)
    assert all("fop_m" not in s for p, s in fop.state.items() if not side(p, linear))


@pytest.mark.parametrize("linear,sides", [("scalar", [5, 0, 9, 0, 1, 0]), ("input", [5, 0, 9, 0, 7, 0])])
@pytest.mark.parametrize("base", ["sgd", "adam"])
def test_preconditioner_shapes_and_the_hypergradient_is_dJ_dM(linear, sides, base):
    """Conv: prod(kernel) x prod(kernel); linear: 1 x 1 (scalar) or in x in (input); biases none. M moves by
    -rho * dJ(theta_t)/dM with J's gradient computed by autograd through theta_t = theta_{t-1} + Z M M^T."""
    net = conv_and_linear()
    side_of = lambda p: side(p, linear)
    assert [side_of(p) for p in net.parameters()] == sides
    rho = 0.3
    opt = FOP(net.parameters(), base=base, lr=0.1 if base == "sgd" else 0.01, fop_lr=rho, linear=linear,
              momentum=0.9)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    loss_of(net, 0).backward()
    opt.step()
    opt.zero_grad()
    z = {n: opt.state[p]["fop_step"].clone() for n, p in net.named_parameters() if side_of(p)}
    for n, p in net.named_parameters():
        if side_of(p):
            assert torch.allclose(p.detach(), before[n] + z[n])   # M = I at the first step: the base's step
    ms = {n: torch.eye(side_of(p), requires_grad=True) for n, p in net.named_parameters() if side_of(p)}
    # the next loss as a function of the preconditioners
    moved = {n: before[n] + (z[n].reshape(-1, m.shape[0]) @ m @ m.T).reshape(before[n].shape) for n, m in ms.items()}
    params = {n: moved.get(n, p.detach()) for n, p in net.named_parameters()}
    copy = conv_and_linear()   # the net with its parameters replaced by those functions of M
    for n, v in params.items():
        mod, attr = n.split(".")
        delattr(copy[mod], attr)
        setattr(copy[mod], attr, v)
    loss = loss_of(copy, 1)
    grads = dict(zip(ms, torch.autograd.grad(loss, list(ms.values()))))
    loss_of(net, 1).backward()
    opt.step()
    for n, p in net.named_parameters():
        if side_of(p):
            expected = torch.eye(side_of(p)) - rho * grads[n]
            assert torch.allclose(opt.state[p]["fop_m"], expected, atol=1e-6), n
            assert not torch.equal(opt.state[p]["fop_m"], torch.eye(side_of(p)))


def data_and_mask():
    data = load("synthetic")
    make = lambda s: models.build("mlp", data.input_shape, 10, seed=s, widths=(32, 16))
    names = models.prunable_names(make(0))
    mask = Mask({n: torch.rand(p.shape, generator=torch.Generator().manual_seed(3)) > 0.5
                 for n, p in make(0).named_parameters() if n in names}, names)
    return data, make, mask


class MaskedStaysZero:
    def __init__(self, mask):
        self.mask, self.checked = mask, 0

    def after_step(self, step, model):
        for n, p in model.named_parameters():
            if n in self.mask.tensors:
                assert torch.all(p[~self.mask[n]] == 0), (step, n)
        self.checked += 1


@pytest.mark.parametrize("optimizer", ["fop-sgd", "fop-adam"])
def test_fop_with_masks_keeps_masked_weights_zero_and_resumes_exactly(optimizer, tmp_path):
    data, make, mask = data_and_mask()
    train = train_spec(optimizer, fop_lr=0.5)
    schedule = Schedule.from_spec(train, 30)
    check = MaskedStaysZero(mask)
    ref = make(0)
    fit(ref, data, train, seed=0, start=0, end=60, schedule=schedule, mask=mask, callbacks=[check])
    assert check.checked == 60
    unit = Unit(tmp_path / "u")
    half = make(0)
    fit(half, data, train, seed=0, start=0, end=25, schedule=schedule, mask=mask, checkpoints=Checkpoints(unit, every=20))
    assert Checkpoints(unit).resume_step() == 20
    resumed = make(99)
    fit(resumed, data, train, seed=0, start=0, end=60, schedule=schedule, mask=mask, checkpoints=Checkpoints(unit, every=20))
    assert all(torch.equal(x, y) for x, y in zip(ref.state_dict().values(), resumed.state_dict().values()))
    tensors, state = unit.load_checkpoint()
    ms = [k for k in tensors if k.endswith(".fop_m")]
    # the preconditioners did learn something (else the resume check would be weak)
    assert len(ms) == 3 and any(not torch.equal(tensors[k], torch.eye(tensors[k].shape[0])) for k in ms)


def test_fop_jobs_never_stack(monkeypatch):
    from ticketlab.train import jobs

    data, make, mask = data_and_mask()
    train = train_spec("fop-adam")
    schedule = Schedule.from_spec(train, 30)
    monkeypatch.setattr(jobs, "fit_stacked", lambda *a, **k: pytest.fail("FOP units must train alone"))
    todo = [jobs.Job(key=s, model=make(s), seed=s, start=0, end=20, schedule=schedule, mask=mask) for s in (0, 1)]
    results = jobs.run_jobs(todo, data, train, stack=True, max_batch=2)
    assert len(results) == 2 and all(r.steps == 20 for r in results)


@pytest.mark.parametrize("argv,message", [
    (["--optimizer", "adam", "--fop-lr", "0.1"], "--fop-lr applies to --optimizer fop-sgd or fop-adam only"),
    (["--optimizer", "fop-adam", "--fop-lr", "-1"], "--fop-lr: must be in [0, inf)"),
    (["--optimizer", "fop-adam", "--nesterov", "true"], "--nesterov true applies to --optimizer sgd only"),
    (["--optimizer", "fop-rmsprop"], "unknown optimizer 'fop-rmsprop'"),
    (["--optimizer", "sgd", "--fop-linear", "input"], "--fop-linear applies to --optimizer fop-sgd or fop-adam only"),
    (["--optimizer", "fop-sgd", "--fop-linear", "full"], "unknown FOP linear-layer preconditioner 'full'; valid: input, none, scalar"),
])
def test_bad_fop_input_is_one_line(run_cli, tmp_path, argv, message):
    code, out, err = run_cli("lottery", *argv, "--out", tmp_path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_fop_run_is_named_by_its_linear_preconditioner():
    """The first FOP (no --fop-linear; input-side matrices) wrote folders under the hash of its settings: a
    run of today's default must not land in them, nor differ from them where FOP is not used."""
    make = lambda **kw: specs.from_mapping(LotterySpec, {"dataset": "synthetic", **kw})
    first_fop = specs.spec_hash(make(optimizer="fop-adam")) == hashlib.sha256(json.dumps(
        {"experiment": "lottery", "dataset": "synthetic", "optimizer": "fop-adam"}, sort_keys=True).encode()).hexdigest()[:10]
    assert not first_fop
    hashes = {specs.spec_hash(make(optimizer="fop-adam", fop_linear=v)) for v in ("scalar", "input", "none")}
    assert len(hashes) == 3
    plain = specs.spec_hash(make(optimizer="adam"))
    assert plain == hashlib.sha256(json.dumps({"experiment": "lottery", "dataset": "synthetic"},
                                              sort_keys=True).encode()).hexdigest()[:10]


@pytest.mark.parametrize("base,lr,grows", [("sgd", 0.01, True), ("sgd", 0.19, False), ("adam", 0.05, True), ("adam", 1.0, False)])
def test_a_scalar_preconditioner_learns_the_step_size(base, lr, grows):
    """On a quadratic (curvatures 1..10), a 1 x 1 preconditioner is a learned step scale: it grows when the
    rate is too small (consecutive steps agree) and shrinks when steps overshoot (they alternate)."""
    curvature = torch.linspace(1, 10, 50).view(5, 10)
    x = torch.nn.Parameter(torch.ones(5, 10))
    opt = FOP([x], base=base, lr=lr, fop_lr=1e-3)
    for _ in range(300):
        opt.zero_grad()
        (0.5 * (curvature * x * x).sum()).backward()
        opt.step()
    scale = opt.state[x]["fop_m"].item() ** 2
    assert (scale > 1.2) if grows else (scale < 0.8), scale


def test_every_evaluation_row_says_what_the_preconditioners_do(tmp_path):
    """metrics.jsonl rows of a FOP unit hold each preconditioned layer's scale (trace(P) / k) and distance from
    the identity, read from the optimizer's own M: identity values at rho = 0, moving ones otherwise."""
    data, make, mask = data_and_mask()
    names = [n for n, p in make(0).named_parameters() if p.dim() > 1]
    for rho in (0.0, 0.5):
        train = train_spec("fop-sgd", fop_lr=rho)
        model = make(0)
        fitted = fit(model, data, train, seed=0, start=0, end=60, schedule=Schedule.from_spec(train, 30))
        first, *rest = fitted.metrics
        assert "fop_scale" not in first   # step 0: no step taken yet
        for row in rest:
            assert set(row["fop_scale"]) == set(row["fop_deviation"]) == set(names)
        last = rest[-1]
        if rho == 0:
            assert all(v == 1.0 for v in last["fop_scale"].values()) and all(v == 0 for v in last["fop_deviation"].values())
        else:
            assert all(v != 1.0 for v in last["fop_scale"].values())
            assert all(abs(last["fop_deviation"][n] - abs(last["fop_scale"][n] - 1)) < 1e-6 for n in names)  # 1 x 1: |m^2 - 1|
