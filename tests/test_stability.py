"""Linear mode connectivity: the path between two networks, the error barrier, and `ticketlab stability`."""

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from ticketlab import spec as specs
from ticketlab.experiments.stability import StabilitySpec, lottery_spec, run
from ticketlab.instruments.interpolation import alphas, error_along_path, error_barrier, interpolate_state
from ticketlab.store import Unit

SMALL = dict(dataset="synthetic", model="mlp", widths=(16,), steps="30it", batch_size=50, eval_every="30it", lr=1e-2)


def test_error_barrier_and_alphas():
    assert error_barrier([0.1, 0.3, 0.2]) == pytest.approx(0.15)
    assert error_barrier([0.2, 0.1, 0.2]) == pytest.approx(0.0)   # never below 0 when an end is the max
    assert error_barrier([0.4, 0.5, 0.1]) == pytest.approx(0.25)  # the mean of the ends, not their min or max
    assert alphas(3) == [0.0, 0.5, 1.0] and len(alphas(30)) == 30
    assert alphas(5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="at least 2 points"):
        alphas(1)
    a, b = {"w": torch.zeros(2), "n": torch.tensor(3)}, {"w": torch.ones(2), "n": torch.tensor(5)}
    mid = interpolate_state(a, b, 0.25)
    assert torch.equal(mid["w"], torch.full((2,), 0.25)) and int(mid["n"]) == 3
    with pytest.raises(ValueError, match="differ in their tensors"):
        interpolate_state(a, {"w": torch.ones(2)}, 0.5)


# ------------------------------------------------------------------------------------ hand-built paths
# Inputs are single numbers and the networks have two logits (class 0, class 1). Every expected value below
# is counted by hand from the closed form of the path, not computed by the code under test.
X = torch.tensor([[0.25], [0.75], [1.25], [1.75], [2.25], [-1.0]])
Y = torch.tensor([1, 1, 1, 0, 1, 0])


def linear(bias_1: float) -> dict:
    """logit_0 = 0, logit_1 = x + bias_1: class 1 exactly where x > -bias_1."""
    return {"weight": torch.tensor([[0.0], [1.0]]), "bias": torch.tensor([0.0, bias_1])}


def test_error_along_the_path_between_two_linear_models_counted_by_hand():
    """The ends predict class 1 for x > 0 and for x > 2; at alpha the bias is -2 alpha: class 1 for x > 2 alpha.
    Points (x, label): (0.25, 1) (0.75, 1) (1.25, 1) (1.75, 0) (2.25, 1) (-1, 0).

        alpha  threshold  predictions   wrong
        0      0          1 1 1 1 1 0   x = 1.75                       1/6
        0.25   0.5        0 1 1 1 1 0   x = 0.25, 1.75                 2/6
        0.5    1          0 0 1 1 1 0   x = 0.25, 0.75, 1.75           3/6
        0.75   1.5        0 0 0 1 1 0   x = 0.25, 0.75, 1.25, 1.75     4/6
        1      2          0 0 0 0 1 0   x = 0.25, 0.75, 1.25           3/6

    barrier = 4/6 - (1/6 + 3/6) / 2 = 2/6."""
    model = torch.nn.Linear(1, 2)
    path = error_along_path(model, linear(0.0), linear(-2.0), X, Y, points=5)
    assert [r["alpha"] for r in path] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [round(6 * r["test_error"]) for r in path] == [1, 2, 3, 4, 3]
    assert [round(6 * r["test_accuracy"]) for r in path] == [5, 4, 3, 2, 3]
    assert error_barrier([r["test_error"] for r in path]) == pytest.approx(2 / 6)
    # the loss has a closed form too: cross-entropy of logits (0, z), z = x - 2 alpha, is log(1 + e^z) - [y = 1] z
    for r in path:
        z = [float(x) - 2 * r["alpha"] for x in X[:, 0]]
        expected = sum(math.log1p(math.exp(zi)) - (zi if int(yi) == 1 else 0.0) for zi, yi in zip(z, Y)) / len(z)
        assert r["test_loss"] == pytest.approx(expected, rel=1e-5)
    # evaluated in batches of 4 (a batch and a part): the same errors and, to rounding, losses
    batched = error_along_path(model, linear(0.0), linear(-2.0), X, Y, points=5, batch_size=4)
    assert [r["test_error"] for r in batched] == [r["test_error"] for r in path]
    assert [r["test_loss"] for r in batched] == pytest.approx([r["test_loss"] for r in path], rel=1e-6)
    # `model` is overwritten along the way: it ends as the second network
    assert torch.equal(model.bias.detach(), torch.tensor([0.0, -2.0]))


def relu_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(1, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))


def relu_state(swapped: bool) -> dict:
    """Hidden units relu(x) and relu(-x) (swapped: the same units in the other order); logit_1 = h_1 + h_2 - 1/2,
    logit_0 = 0. Both orders compute the same function: class 1 exactly where |x| > 1/2."""
    first = torch.tensor([[-1.0], [1.0]]) if swapped else torch.tensor([[1.0], [-1.0]])
    return {"0.weight": first, "0.bias": torch.zeros(2),
            "2.weight": torch.tensor([[0.0, 0.0], [1.0, 1.0]]), "2.bias": torch.tensor([0.0, -0.5])}


def test_a_network_and_its_permuted_copy_have_the_barrier_of_the_closed_form():
    """Between a network and its hidden-unit permutation the first layer is (1 - 2 alpha) (1, -1), so
    h_1 + h_2 = |1 - 2 alpha| |x| and class 1 needs |x| |1 - 2 alpha| > 1/2: at the midpoint every input is
    class 0. Points: -3, -0.8, 0.8, 3 (class 1) and -0.25, 0.25 (class 0).

        alpha  |1 - 2 alpha|   class-1 points wrong (|x| |1 - 2 alpha| <= 1/2)
        0      1               none                0/6
        0.25   0.5             x = -0.8, 0.8       2/6
        0.5    0               all four            4/6
        0.75   0.5             x = -0.8, 0.8       2/6
        1      1               none                0/6"""
    x = torch.tensor([[-3.0], [-0.8], [-0.25], [0.25], [0.8], [3.0]])
    y = torch.tensor([1, 1, 0, 0, 1, 1])
    path = error_along_path(relu_net(), relu_state(False), relu_state(True), x, y, points=5)
    assert [round(6 * r["test_error"]) for r in path] == [0, 2, 4, 2, 0]
    assert error_barrier([r["test_error"] for r in path]) == pytest.approx(4 / 6)
    # a network and itself: the same function all along the path, no barrier
    same = error_along_path(relu_net(), relu_state(False), relu_state(False), x, y, points=5)
    assert [r["test_error"] for r in same] == [0.0] * 5
    # more points: the error at alpha is the share of class-1 points with |x| |1 - 2 alpha| <= 1/2
    fine = error_along_path(relu_net(), relu_state(False), relu_state(True), x, y, points=9)
    by_hand = [sum(1 for xi in (3.0, 0.8, 0.8, 3.0) if xi * abs(1 - 2 * a) <= 0.5) / 6 for a in alphas(9)]
    assert [r["test_error"] for r in fine] == pytest.approx(by_hand)


def test_stability_experiment_dense_and_ticket(tmp_path):
    spec = specs.from_mapping(StabilitySpec, {**SMALL, "copy_steps": ("0it", "10it"), "ticket_levels": (0, 1),
                                              "interpolation_points": 5})
    res = run(spec, out=tmp_path, progress=False)
    assert [(r["level"], r["copy_step"]) for r in res] == [(0, 0), (0, 10), (1, 0), (1, 10)]
    folder = tmp_path / f"stability-{specs.spec_hash(spec)}"
    for r in res:
        a = Unit(folder / "seed-0" / f"level-{r['level']:02d}" / f"k-{r['copy_step']}" / "copy-0").read("final.safetensors")
        b = Unit(folder / "seed-0" / f"level-{r['level']:02d}" / f"k-{r['copy_step']}" / "copy-1").read("final.safetensors")
        assert not torch.equal(a["hidden.0.weight"], b["hidden.0.weight"]), "the copies see different data orders"
        # the ends of the path are the two trained copies: their accuracy is what each copy's own training measured
        for c in (0, 1):
            copy = Unit(folder / "seed-0" / f"level-{r['level']:02d}" / f"k-{r['copy_step']}" / f"copy-{c}")
            assert r[f"copy_{c}_accuracy"] == copy.read("result.json")["test_accuracy"]
    # the ticket is the lottery experiment's level-1 ticket rewound to k, and both copies keep its mask
    lot = lottery_spec(spec, "10it", 1)
    ticket = Unit(tmp_path / f"lottery-{specs.spec_hash(lot)}" / "seed-0" / "level-01" / "ticket")
    mask = ticket.read("mask.safetensors")
    parent = Unit(folder / "seed-0" / "parent").read("w-10.safetensors")
    assert torch.equal(ticket.read("start.safetensors")["hidden.0.weight"], parent["hidden.0.weight"] * mask["hidden.0.weight"]), \
        "the lottery run's w_k is the same network as the dense parent's"
    copy = Unit(folder / "seed-0" / "level-01" / "k-10" / "copy-1").read("final.safetensors")
    assert (copy["hidden.0.weight"][~mask["hidden.0.weight"]] == 0).all()
    assert 0.7 < res.where(level=1)[0]["weights_remaining"] < 0.9
    summary = json.loads((folder / "summary.json").read_text())
    assert len(summary["error_barrier_by_level_and_k"]) == 4
    rows = (folder / "interpolation.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 5
    for png in ("interpolation.png", "barrier.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"
    mtime = (folder / "seed-0" / "level-00" / "k-0" / "copy-0" / "final.safetensors").stat().st_mtime_ns
    assert run(spec, out=tmp_path, progress=False).rows == res.rows
    assert (folder / "seed-0" / "level-00" / "k-0" / "copy-0" / "final.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.heavy
def test_stability_results_do_not_depend_on_workers(tmp_path):
    """Parents, copies, paths and the lottery runs' tickets are units of one task graph: with two worker
    processes they run side by side, with the same numbers."""
    import ticketlab

    settings = dict(SMALL, copy_steps=("0it", "10it"), ticket_levels=(0, 1), interpolation_points=4, seeds=(0, 1))
    tables = []
    for workers in (1, 2):
        out = tmp_path / f"workers-{workers}"
        ticketlab.stability(**settings, workers=workers, out=str(out), progress=False)
        (folder,) = out.glob("stability-*")
        tables.append([(folder / name).read_text() for name in ("results.csv", "interpolation.csv")])
        assert len(list(out.glob("lottery-*"))) == 2, "one lottery run per k, each with its own folder and report"
        assert all((lot / "results.csv").is_file() for lot in out.glob("lottery-*"))
    assert tables[0] == tables[1] and len(tables[0][0].splitlines()) == 1 + 2 * 2 * 2


FAST = ["--dataset", "synthetic", "--model", "mlp", "--widths", "8", "--steps", "6it", "--batch-size", "100",
        "--eval-every", "3it", "--no-progress"]


def cli(python, env, *args):
    return subprocess.run([python, "-m", "ticketlab", "stability", *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.heavy
def test_cli_stability_smoke(python, cli_env, tmp_path):
    r = cli(python, cli_env, *FAST, "--copy-steps", "0it,2it", "--interpolation-points", "4", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    (folder,) = tmp_path.glob("stability-*")
    header = (folder / "results.csv").read_text().splitlines()[0]
    assert "error_barrier" in header and "test_accuracy" in header


@pytest.mark.parametrize("args, message", [
    (["--copy-steps", "6it"], "--copy-steps 6it (6 iterations) is not before the end of training"),
    (["--copy-steps", "0it,0ep"], "is the same step as another entry"),
    (["--interpolation-points", "1"], "--interpolation-points: must be >= 2"),
    (["--ticket-levels", "-1"], "--ticket-levels"),
])
def test_cli_stability_bad_input(run_cli, tmp_path, args, message):
    out = tmp_path / "runs"
    code, stdout, stderr = run_cli("stability", *FAST, *args, "--out", out)
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    assert not out.exists()


@pytest.mark.slow
def test_mnist1d_dense_network_becomes_stable_early_in_training(tmp_path):
    """Frankle et al. 2020: copies made at initialisation end in different basins (barrier > 0); copies made
    a little later are linearly connected (barrier ~ 0)."""
    data = Path(__file__).resolve().parents[1] / "data"
    spec = specs.from_mapping(StabilitySpec, dict(data_dir=str(data), model="mnist1d_mlp", steps="1500it",
                                                  eval_every="1500it", copy_steps=("0it", "100it", "500it")))
    res = run(spec, out=tmp_path, progress=False)
    barrier = {r["copy_step"]: r["error_barrier"] for r in res}
    print(f"\nMNIST-1D dense error barrier by k: {barrier}")
    assert barrier[0] > barrier[500] and barrier[500] < 0.02
