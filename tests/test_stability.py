"""Linear mode connectivity: the path between two networks, the error barrier, and `ticketlab stability`."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from ticketlab import spec as specs
from ticketlab.experiments.common import Setup
from ticketlab.experiments.stability import StabilitySpec, lottery_spec, run
from ticketlab.instruments.interpolation import alphas, error_along_path, error_barrier, interpolate_state
from ticketlab.store import Unit
from ticketlab.train import fit
from ticketlab.train.evaluate import evaluate

SMALL = dict(dataset="synthetic", model="mlp", widths=(16,), steps="30it", batch_size=50, eval_every="30it", lr=1e-2)


def trained_pair():
    spec = specs.from_mapping(StabilitySpec, SMALL)
    setup = Setup.prepare(spec)
    states = []
    for seed in (0, 1):
        model = setup.build_model(seed)
        fit(model, setup.data, spec.train, seed=seed, start=0, end=setup.total_steps, schedule=setup.schedule)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return setup, model, states


def test_error_barrier_and_alphas():
    assert error_barrier([0.1, 0.3, 0.2]) == pytest.approx(0.15)
    assert error_barrier([0.2, 0.1, 0.2]) == pytest.approx(0.0)   # never below 0 when an end is the max
    assert alphas(3) == [0.0, 0.5, 1.0] and len(alphas(30)) == 30
    a, b = {"w": torch.zeros(2), "n": torch.tensor(3)}, {"w": torch.ones(2), "n": torch.tensor(5)}
    mid = interpolate_state(a, b, 0.25)
    assert torch.equal(mid["w"], torch.full((2,), 0.25)) and int(mid["n"]) == 3


def test_barrier_of_a_model_with_itself_is_zero_and_the_ends_are_the_two_models():
    setup, model, (a, b) = trained_pair()
    x, y = setup.data.test_x, setup.data.test_y
    same = error_along_path(model, a, a, x, y, points=9)
    assert error_barrier([r["test_error"] for r in same]) == 0.0
    assert len({r["test_accuracy"] for r in same}) == 1
    path = error_along_path(model, a, b, x, y, points=9)
    for state, row in ((a, path[0]), (b, path[-1])):
        model.load_state_dict(state)
        loss, acc = evaluate(model, x, y)
        assert row["test_accuracy"] == acc and row["test_loss"] == loss
    # two independently initialised networks are not linearly connected: the barrier is large
    assert error_barrier([r["test_error"] for r in path]) > 0.1


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
        assert r["error_barrier"] >= 0
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
def test_cli_stability_bad_input(python, cli_env, tmp_path, args, message):
    out = tmp_path / "runs"
    r = cli(python, cli_env, *FAST, *args, "--out", str(out))
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
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
