"""Pruning during training (`ticketlab sparse-train`): gradual magnitude pruning hits the cubic schedule at every
pruning step, SET and RigL hold every layer's count exactly and grow weights at zero, RigL grows where the dense
gradient is largest, SET's growth is seeded, the drop fraction decays by a cosine, resumption is exact, and bad
input is one line."""

import math

import pytest
import torch
from interrupt import Stop, kill_at

from ticketlab import models
from ticketlab.data import load
from ticketlab.sparse import Mask
from ticketlab.sparse.allocation import erk
from ticketlab.sparse.count import kept_count, pruned_count
from ticketlab.sparse.dynamic import (
    cosine_drop_fraction,
    drop_and_grow,
    gmp_sparsity,
    gmp_steps,
)
from ticketlab.store import Unit
from ticketlab.train import OnStep, Schedule, fit
from ticketlab.train.fit import Checkpoints
from ticketlab.train.sparse_callbacks import (
    DynamicSparse,
    GradualMagnitude,
    random_mask,
)


class Train:
    optimizer, lr, momentum, nesterov, weight_decay = "adam", 5e-3, 0.9, False, 0.0
    batch_size, eval_batch_size, eval_every = 20, 1000, "5it"


class SGD(Train):
    optimizer, lr = "sgd", 0.05


DATA = load("synthetic")
SCHEDULE = Schedule(lr=5e-3, kind="constant", total=60)


def mlp(seed=0):
    return models.build("mlp", DATA.input_shape, DATA.num_classes, seed=seed, widths=(24, 16))


def shapes(model):
    params = dict(model.named_parameters())
    return {n: tuple(params[n].shape) for n in models.prunable_names(model)}


def dense_mask(model):
    return Mask({n: torch.ones(s, dtype=torch.bool) for n, s in shapes(model).items()}, list(shapes(model)))


# ----------------------------------------------------------------------------------------------------- GMP
def test_the_cubic_schedule_and_its_pruning_steps():
    assert gmp_sparsity(0, 0.9, 10, 50) == 0.0 and gmp_sparsity(10, 0.9, 10, 50) == 0.0
    assert gmp_sparsity(50, 0.9, 10, 50) == gmp_sparsity(99, 0.9, 10, 50) == 0.9
    assert gmp_sparsity(30, 0.9, 10, 50) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    assert gmp_steps(10, 50, 10) == [20, 30, 40, 50]
    assert gmp_steps(10, 45, 10) == [20, 30, 40, 45], "the final density is reached at the end even off the grid"


@pytest.mark.parametrize("allocation", ["uniform", "erk", "global"])
def test_gmp_hits_the_schedule_at_every_pruning_step(allocation):
    """After every pruning step the kept counts are the count rule's at the schedule's density: per layer
    (uniform, ERK), or the pooled total (global, exact; its split follows the magnitudes); between prunings the
    mask does not change; pruned weights are zero."""
    model = mlp(0)
    mask = dense_mask(model)
    start, end, every, density = 5, 35, 5, 0.1
    gmp = GradualMagnitude(mask, density, start=start, end=end, every=every, allocation=allocation, seed=3)
    sizes = {n: math.prod(s) for n, s in shapes(model).items()}
    seen = []

    def check(step, net):
        last = max((t for t in gmp.steps if t <= step), default=0)   # between prunings: the last one's target
        target = 1 - gmp_sparsity(last, 1 - density, start, end)
        kept = {n: int(m.sum()) for n, m in mask.tensors.items()}
        if allocation == "uniform":
            assert kept == {n: kept_count(k, target) for n, k in sizes.items()}
        elif allocation == "erk":
            assert kept == erk(shapes(model), target)
        else:
            assert sum(kept.values()) == kept_count(sum(sizes.values()), target)
        total = sum(kept.values())   # the schedule's sparsity to within one weight per layer
        assert abs(total - sum(sizes.values()) * target) <= len(sizes) * 0.5 + 1e-6
        params = dict(net.named_parameters())
        for n, keep in mask.tensors.items():
            assert torch.count_nonzero(params[n].detach()[~keep]) == 0
        seen.append(step)

    fit(model, DATA, Train, seed=0, start=0, end=40, schedule=SCHEDULE, mask=mask,
        callbacks=[gmp, OnStep(lambda s, net: check(s, net) if s in gmp.steps or s % 7 == 0 else None)])
    assert set(gmp_steps(start, end, every)) <= set(seen)
    assert sum(int(m.sum()) for m in mask.tensors.values()) == (
        sum(kept_count(k, density) for k in sizes.values()) if allocation == "uniform"
        else sum(erk(shapes(model), density).values()) if allocation == "erk"
        else kept_count(sum(sizes.values()), density))


def test_gmp_prunes_the_smallest_kept_magnitudes():
    w = {"a": torch.tensor([[0.5, -0.1, 0.3, -2.0, 0.05, 1.0]])}
    net = torch.nn.Module()
    net.a = torch.nn.Parameter(w["a"].clone())
    mask = Mask({"a": torch.ones(1, 6, dtype=torch.bool)})
    gmp = GradualMagnitude(mask, 0.5, start=0, end=1, every=1)
    gmp.on_start(0, net)
    gmp.after_step(1, net)
    assert mask["a"].tolist() == [[True, False, False, True, False, True]]
    assert net.a.detach().tolist() == [[0.5, 0.0, 0.0, -2.0, 0.0, 1.0]]


# -------------------------------------------------------------------------------------------- SET and RigL
def test_drop_fraction_follows_the_cosine_decay():
    alpha, end = 0.3, 100
    assert cosine_drop_fraction(0, alpha, end) == pytest.approx(alpha)
    assert cosine_drop_fraction(50, alpha, end) == pytest.approx(alpha / 2)
    assert cosine_drop_fraction(25, alpha, end) == pytest.approx(alpha / 2 * (1 + math.cos(math.pi / 4)))
    assert cosine_drop_fraction(100, alpha, end) == cosine_drop_fraction(150, alpha, end) == 0.0
    # and the callback drops that fraction (by the count rule) of each layer's active weights at each update
    model = mlp(0)
    mask = random_mask(shapes(model), 0.3, "uniform", torch.Generator().manual_seed(0))
    dst = DynamicSparse(mask, "set", every=10, end=50, alpha=alpha)
    before = {}

    def record(step, net):
        before.update({n: m.clone() for n, m in mask.tensors.items()})

    fit(model, DATA, Train, seed=0, start=0, end=60, schedule=SCHEDULE, mask=mask, callbacks=[OnStep(record), dst])
    assert [u["step"] for u in dst.updates] == [10, 20, 30, 40]
    active = {n: int(m.sum()) for n, m in mask.tensors.items()}
    for u in dst.updates:
        assert u["fraction"] == pytest.approx(cosine_drop_fraction(u["step"], alpha, 50))
        assert u["grown"] == sum(pruned_count(a, u["fraction"]) for a in active.values())


@pytest.mark.parametrize("growth", ["set", "rigl"])
@pytest.mark.parametrize("train", [Train, SGD])
def test_set_and_rigl_keep_every_layers_count_and_grow_at_zero(growth, train):
    """After every update each layer keeps exactly its ERK count; every grown weight is exactly zero when grown
    and its optimizer state (momentum; Adam's moments) is zero; dropped weights are zero."""
    model = mlp(1)
    mask = random_mask(shapes(model), 0.2, "erk", torch.Generator().manual_seed(1))
    counts = {n: int(m.sum()) for n, m in mask.tensors.items()}
    assert counts == erk(shapes(model), 0.2)
    dst = DynamicSparse(mask, growth, every=4, end=30, alpha=0.5, seed=1)
    old = {}
    checked = []

    def snapshot(step, net):   # before the callback: the mask the update starts from
        old.clear()
        old.update({n: m.clone() for n, m in mask.tensors.items()})

    def check(step, net):
        if not dst.due(step):
            return
        params = dict(net.named_parameters())
        opt_state = dst.optimizer.state
        grown_any = 0
        for n, keep in mask.tensors.items():
            assert int(keep.sum()) == counts[n], f"{n} at step {step}"
            grown = keep & ~old[n]
            grown_any += int(grown.sum())
            assert torch.count_nonzero(params[n].detach()[grown]) == 0
            assert torch.count_nonzero(params[n].detach()[~keep]) == 0
            for v in opt_state[params[n]].values():
                if torch.is_tensor(v) and v.shape == keep.shape:
                    assert torch.count_nonzero(v[grown]) == 0
        assert grown_any > 0
        checked.append(step)

    fit(model, DATA, train, seed=0, start=0, end=40, schedule=SCHEDULE, mask=mask,
        callbacks=[OnStep(snapshot), dst, OnStep(check)])
    assert checked == [4, 8, 12, 16, 20, 24, 28]


def test_rigl_grows_where_the_dense_gradient_is_largest():
    weight = torch.tensor([0.9, -0.8, 0.05, 0.0, 0.0, 0.0, 0.0, 0.7])
    mask = torch.tensor([True, True, True, False, False, False, False, True])
    grad = torch.tensor([5.0, 5.0, 0.2, 0.1, -3.0, 2.0, 0.5, 0.0])
    new, grown = drop_and_grow(weight, mask, 0.5, "rigl", grad=grad)   # 4 active: drop 2 (0.05, 0.7), grow 2
    assert sorted(grown.tolist()) == [4, 5]
    assert new.tolist() == [True, True, False, False, True, True, False, False]
    # a just-dropped weight competes for growth like any other (RigL's code)
    grad2 = torch.tensor([0.0, 0.0, 9.0, 0.1, 0.2, 0.3, 0.4, 0.0])
    new2, grown2 = drop_and_grow(weight, mask, 0.5, "rigl", grad=grad2)
    assert sorted(grown2.tolist()) == [2, 6] and int(new2.sum()) == 4


def test_rigl_uses_the_dense_gradient_of_masked_weights():
    """Masks zero weights, not gradients: the gradient the optimizer leaves in a masked layer is dense, so
    RigL reads the dense gradient of the step's batch without a second backward pass."""
    model = mlp(0)
    mask = random_mask(shapes(model), 0.1, "uniform", torch.Generator().manual_seed(0))
    grads = {}

    def grab(step, net):
        if step == 3:
            grads.update({n: p.grad.clone() for n, p in net.named_parameters() if n in mask.tensors})

    fit(model, DATA, Train, seed=0, start=0, end=3, schedule=SCHEDULE, mask=mask, callbacks=[OnStep(grab)])
    for n, keep in mask.tensors.items():
        assert torch.count_nonzero(grads[n][~keep]) > 0, n


def test_set_growth_is_seeded():
    def masks(seed):
        model = mlp(0)
        mask = random_mask(shapes(model), 0.3, "uniform", torch.Generator().manual_seed(0))
        fit(model, DATA, Train, seed=0, start=0, end=25, schedule=SCHEDULE, mask=mask,
            callbacks=[DynamicSparse(mask, "set", every=5, end=25, alpha=0.4, seed=seed)])
        return mask

    a, b, c = masks(0), masks(0), masks(1)
    assert a.equal(b)
    assert not a.equal(c)
    assert all(int(a[n].sum()) == int(c[n].sum()) for n in a)


# ------------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("method", ["gmp", "set", "rigl"])
def test_an_interrupted_training_resumes_to_identical_numbers(tmp_path, method):
    """Killed after a checkpoint (mask and SET's generator state in it), resumed from scratch objects: the same
    metrics, weights and mask as a run never interrupted."""
    def run(unit=None, kill=None):
        model = mlp(2)
        if method == "gmp":
            mask = dense_mask(model)
            cb = GradualMagnitude(mask, 0.1, start=4, end=30, every=3, seed=2)
        else:
            mask = random_mask(shapes(model), 0.2, "uniform", torch.Generator().manual_seed(2))
            cb = DynamicSparse(mask, method, every=4, end=36, alpha=0.4, seed=2)
        extra = [kill_at(kill)] if kill else []
        fitted = fit(model, DATA, SGD, seed=0, start=0, end=40, schedule=SCHEDULE, mask=mask,
                     checkpoints=Checkpoints(unit, 10) if unit else None, callbacks=[cb] + extra)
        return fitted, model, mask

    whole, whole_model, whole_mask = run()
    unit = Unit(tmp_path / "u")
    with pytest.raises(Stop):
        run(unit, kill=27)   # checkpoint at 20; the updates at 24 (and GMP's at 22, 25) are redone
    assert unit.load_checkpoint()[1]["step"] == 20
    resumed, model, mask = run(unit)
    assert resumed.metrics == whole.metrics
    assert all(torch.equal(v, whole_model.state_dict()[k]) for k, v in model.state_dict().items())
    assert mask.equal(whole_mask)


# ------------------------------------------------------------------------------------------ the experiment
def test_the_command_writes_rows_like_the_other_experiments(run_cli, tmp_path):
    code, out, err = run_cli("sparse-train", "--methods", "gmp,set,rigl", "--densities", "0.2,0.05", "--steps", "60it",
                             "--dataset", "synthetic", "--model", "mlp", "--widths", "24,16", "--batch-size", "20",
                             "--eval-every", "20it", "--prune-every", "10it", "--update-every", "10it",
                             "--out", tmp_path, "--no-progress", "--workers", "1")
    assert code == 0, err
    import csv
    run_dir = next(tmp_path.glob("sparse-train-*"))
    with open(run_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert {"method", "density", "weights_remaining", "test_accuracy", "seed"} <= set(rows[0])
    for r in rows:
        assert abs(float(r["weights_remaining"]) - float(r["density"])) < 0.01
    assert (run_dir / "accuracy.png").exists()
    assert "rigl" in out and "0.05" in out
    code, shown, _ = run_cli("show", run_dir)
    assert code == 0 and "gmp" in shown and "set" in shown
    from ticketlab.report import html
    page = html.render([str(run_dir)])
    assert "Sparse training (GMP, SET, RigL)" in page and "rigl at 5% weights" in page
    # one method and one density with the singular flags; the units done are reused
    code, out, err = run_cli("sparse-train", "--method", "rigl", "--density", "0.2", "--steps", "60it",
                             "--dataset", "synthetic", "--model", "mlp", "--widths", "24,16", "--batch-size", "20",
                             "--eval-every", "20it", "--prune-every", "10it", "--update-every", "10it",
                             "--out", tmp_path, "--no-progress", "--workers", "1")
    assert code == 0, err
    assert len(list(tmp_path.glob("sparse-train-*"))) == 1


@pytest.mark.parametrize("argv, message", [
    (["--methods", "gmp,prune"], "sparse-train method"),
    (["--densities", "0"], "(0, 1]"),
    (["--densities", "1.5"], "(0, 1]"),
    (["--methods", "rigl", "--allocation", "global"], "--allocation global applies to --methods gmp only"),
    (["--prune-every", "0it"], "--prune-every 0it"),
    (["--update-every", "0ep"], "--update-every 0ep"),
    (["--methods", "gmp", "--prune-end", "99999it"], "--prune-end"),
    (["--methods", "gmp", "--prune-start", "900it", "--prune-end", "800it"], "--prune-start"),
    (["--methods", "set", "--update-end", "99999it"], "--update-end"),
    (["--drop-fraction", "1.5"], "--drop-fraction"),
    (["--densities", "0.0001", "--model", "mlp", "--widths", "4,4", "--dataset", "synthetic"], "keeps no weight"),
])
def test_bad_input_is_one_line_and_exit_2(run_cli, tmp_path, argv, message):
    code, out, err = run_cli("sparse-train", *argv, "--steps", "1000it", "--out", tmp_path, "--no-progress")
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("sparse-train-*")), "nothing written"
