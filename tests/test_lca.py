"""Loss Change Allocation: the quadrature, the recorder on a small MLP, resume, and the `ticketlab lca` command."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from ticketlab import spec as specs
from ticketlab.experiments.common import Setup
from ticketlab.experiments.lca import LCASpec, recorder, run
from ticketlab.instruments.lca import path_lca, simpson_weights
from ticketlab.sparse import Mask
from ticketlab.store import Unit
from ticketlab.train import fit
from ticketlab.train.evaluate import evaluate
from ticketlab.train.fit import Checkpoints

SMALL = dict(dataset="synthetic", model="mlp", widths=(16, 12), steps="24it", batch_size=50, eval_every="12it", lr=1e-2)


def small(**kw):
    return specs.from_mapping(LCASpec, {**SMALL, **kw})


def record(spec, mask=None, seed=0, **callback_kw):
    setup = Setup.prepare(spec)
    model = setup.build_model(seed)
    if mask is not None:
        mask.apply_(model)
    rec = recorder(spec.lca, setup, model, mask)
    fit(model, setup.data, spec.train, seed=seed, start=0, end=setup.total_steps, schedule=setup.schedule, mask=mask,
        callbacks=rec, **callback_kw)
    return setup, model, rec


# ------------------------------------------------------------------------------------------- quadrature
def polynomial(coeffs_seed: int, degree: int, dim: int = 7):
    """L(theta) = 0.5 theta'A theta + b'theta (+ sum theta_i^6 / 6 if degree 6), with its exact gradient.
    (Simpson's rule integrates the gradient exactly up to cubics, i.e. losses up to degree 4.)"""
    g = torch.Generator().manual_seed(coeffs_seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    a = a @ a.T
    b = torch.randn(dim, generator=g, dtype=torch.float64)

    def loss(t):
        return float(0.5 * t @ a @ t + b @ t + ((t ** 6).sum() / 6 if degree == 6 else 0.0))

    def gradient(t):
        return loss(t), a @ t + b + (t ** 5 if degree == 6 else 0.0)

    t0 = torch.randn(dim, generator=g, dtype=torch.float64)
    t1 = t0 + torch.randn(dim, generator=g, dtype=torch.float64)
    return loss, gradient, t0, t1


def test_simpson_weights():
    assert torch.allclose(simpson_weights(2), torch.tensor([1, 4, 1], dtype=torch.float64) / 6)
    assert torch.allclose(simpson_weights(4), torch.tensor([1, 4, 2, 4, 1], dtype=torch.float64) / 12)
    with pytest.raises(ValueError):
        simpson_weights(3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_simpson_is_exact_on_a_quadratic_loss(seed):
    loss, gradient, t0, t1 = polynomial(seed, 2)
    (l0, g0), (l1, g1) = gradient(t0), gradient(t1)
    r = path_lca(gradient, t0, t1, g0, g1, l0, l1, points=2, max_points=2, tolerance=1e-12)
    assert r.points == 2 and r.evaluations == 1
    assert abs(r.lca_sum - (loss(t1) - loss(t0))) < 1e-10 * max(1.0, abs(loss(t1) - loss(t0)))
    # analytic per-parameter LCA for a quadratic: gradient at the midpoint times the step
    assert torch.allclose(r.lca, gradient((t0 + t1) / 2)[1] * (t1 - t0), atol=1e-12)


def test_adaptive_doubling_converges_on_a_sextic_and_reuses_points():
    loss, gradient, t0, t1 = polynomial(3, 6)
    (l0, g0), (l1, g1) = gradient(t0), gradient(t1)
    coarse = path_lca(gradient, t0, t1, g0, g1, l0, l1, points=2, max_points=2, tolerance=1e-12)
    assert coarse.error > 1e-6, "Simpson with n=2 is not exact for a degree-6 loss"
    fine = path_lca(gradient, t0, t1, g0, g1, l0, l1, points=2, max_points=32, tolerance=1e-3 * coarse.error)
    assert fine.points > 2 and fine.error <= 1e-3 * coarse.error
    assert fine.evaluations == fine.points - 1, "each interior point is evaluated once across doublings"


# --------------------------------------------------------------------------------------------- recorder
def test_sum_of_lca_equals_the_true_loss_change_of_every_step():
    spec = small()
    setup = Setup.prepare(spec)
    model = setup.build_model(0)
    rec = recorder(spec.lca, setup, model)
    true_losses = [evaluate(model, setup.data.train_x, setup.data.train_y)[0]]
    fit(model, setup.data, spec.train, seed=0, start=0, end=setup.total_steps, schedule=setup.schedule, callbacks=rec,
        on_step=lambda s, m: true_losses.append(evaluate(m, setup.data.train_x, setup.data.train_y)[0]))
    t = rec.step_table()
    assert len(t) == setup.total_steps
    changes = torch.tensor(true_losses, dtype=torch.float64).diff()
    assert torch.allclose(t[:, 3], changes, atol=1e-5), "recorded loss change is the full-training-set loss change"
    assert (t[:, 4] - changes).abs().max() <= spec.lca.lca_tolerance
    assert t[:, 3].abs().max() > 10 * spec.lca.lca_tolerance, "steps are large enough for the check to mean something"
    s = rec.summary()
    assert s["relative_error"] < 1e-2 and 0.3 < s["fraction_helped"] < 1.0


def test_adaptive_doubling_triggers_only_when_the_tolerance_is_tight():
    loose = record(small(lca_tolerance=10.0))[2].step_table()
    tight = record(small(lca_tolerance=1e-7))[2].step_table()
    assert (loose[:, 6] == 2).all()
    assert (tight[:, 6] > 2).any()
    assert tight[:, 5].mean() < loose[:, 5].mean()
    fixed = record(small(lca_tolerance=1e-7, lca_max_points=2))[2].step_table()
    assert (fixed[:, 6] == 2).all()


def test_end_point_gradients_are_reused():
    setup, _, rec = record(small(lca_max_points=2))
    steps = setup.total_steps
    assert rec.probe.evaluations == 1 + 2 * steps  # g_0, then per step: the midpoint and the new end point
    assert rec.interior_evaluations == steps


def test_masked_network_lca_is_zero_on_pruned_weights():
    spec = small()
    probe = Setup.prepare(spec).new_model_like()
    g = torch.Generator().manual_seed(0)
    names = ["hidden.0.weight", "hidden.1.weight", "fc.weight"]
    params = dict(probe.named_parameters())
    mask = Mask({n: torch.rand(params[n].shape, generator=g) < 0.3 for n in names}, names)
    _, _, rec = record(spec, mask=mask)
    totals = rec.parameter_totals()
    for n in names:
        assert (totals[n][~mask[n]] == 0).all(), n
        assert (totals[n][mask[n]] != 0).float().mean() > 0.5, n
    assert rec.alive_count == mask.kept() + sum(p.numel() for k, p in params.items() if k not in names)
    assert rec.summary()["relative_error"] < 1e-2


def test_neuron_sums_equal_layer_totals_and_parameter_totals():
    _, _, rec = record(small())
    neurons, layers, totals = rec.neuron_table(), rec.layer_table(), rec.parameter_totals()
    assert torch.allclose(neurons.sum(1), layers.sum(1))
    assert torch.allclose(rec.step_table()[:, 4], layers.sum(1), atol=1e-6)
    start = 0
    for layer, size in zip(rec.layers, rec.neurons):
        expected = totals[f"{layer}.weight"].double().flatten(1).sum(1) + totals[f"{layer}.bias"].double()
        assert torch.allclose(neurons[:, start:start + size].sum(0), expected, atol=1e-5), layer
        start += size


def test_recording_lca_does_not_change_training():
    spec = small()
    setup, with_lca, _ = record(spec)
    plain = setup.build_model(0)
    fit(plain, setup.data, spec.train, seed=0, start=0, end=setup.total_steps, schedule=setup.schedule)
    assert all(torch.equal(a, b) for a, b in zip(with_lca.state_dict().values(), plain.state_dict().values()))


class Stop(Exception):
    pass


def test_resume_after_checkpoint_gives_identical_lca(tmp_path):
    spec = small()
    _, _, whole = record(spec)

    setup = Setup.prepare(spec)
    unit = Unit(tmp_path / "unit")
    model = setup.build_model(0)
    rec = recorder(spec.lca, setup, model)

    def kill(step, m):
        if step == 17:
            raise Stop

    with pytest.raises(Stop):
        fit(model, setup.data, spec.train, seed=0, start=0, end=setup.total_steps, schedule=setup.schedule,
            checkpoints=Checkpoints(unit, 5), callbacks=rec, on_step=kill)
    assert unit.load_checkpoint()[1]["step"] == 15
    model = setup.build_model(0)          # a fresh process: new model, new recorder
    rec = recorder(spec.lca, setup, model)
    fit(model, setup.data, spec.train, seed=0, start=0, end=setup.total_steps, schedule=setup.schedule,
        checkpoints=Checkpoints(unit, 5), callbacks=rec)
    assert torch.equal(rec.step_table(), whole.step_table())
    assert torch.equal(rec.neuron_table(), whole.neuron_table())
    assert torch.equal(rec.param_total, whole.param_total)


# ------------------------------------------------------------------------------------------- experiment
def test_lca_experiment_writes_results_and_resumes(tmp_path):
    spec = small(seeds=(0, 1))
    res = run(spec, out=tmp_path, progress=False)
    folder = tmp_path / f"lca-{specs.spec_hash(spec)}"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["relative_error"] < 1e-2 and 0.3 < summary["fraction_helped"] < 1
    assert {r["seed"] for r in res} == {0, 1} and {r["layer"] for r in res} == {"hidden.0", "hidden.1", "fc"}
    for png in ("lca_layers.png", "lca_helped.png", "lca_neurons.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"
    mtime = (folder / "seed-0" / "lca.safetensors").stat().st_mtime_ns
    again = run(spec, out=tmp_path, progress=False)
    assert again.rows == res.rows and (folder / "seed-0" / "lca.safetensors").stat().st_mtime_ns == mtime


def cli(python, env, *args):
    return subprocess.run([python, "-m", "ticketlab", "lca", *args], env=env, capture_output=True, text=True, timeout=300)


FAST = ["--dataset", "synthetic", "--model", "mlp", "--widths", "8", "--steps", "6it", "--batch-size", "100",
        "--eval-every", "3it", "--no-progress"]


@pytest.mark.heavy
def test_cli_lca_with_a_ticket_mask(python, cli_env, tmp_path):
    from ticketlab.io import save_tensors

    mask_file = tmp_path / "mask.safetensors"
    save_tensors(mask_file, {"hidden.0.weight": torch.rand(8, 256, generator=torch.Generator().manual_seed(0)) < 0.5})
    r = cli(python, cli_env, *FAST, "--mask", str(mask_file), "--out", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr
    (folder,) = (tmp_path / "runs").iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert {"relative_error", "fraction_helped"} <= set(summary)
    assert summary["by_seed"][0]["weights_remaining"] == pytest.approx(0.5, abs=0.05)
    assert (folder / "results.csv").read_text().startswith("seed,layer,lca")


@pytest.mark.parametrize("args, message", [
    (["--lca-points", "3"], "--lca-points 3: must be a power of two"),
    (["--lca-points", "8", "--lca-max-points", "4"], "is below --lca-points"),
    (["--lca-tolerance", "0"], "--lca-tolerance: must be in"),
    (["--lca-subset", "100000"], "--lca-subset 100000 is larger than the training set"),
    (["--lca-layer", "nope"], "--lca-layer 'nope': not a layer"),
    (["--mask", "/nonexistent/mask.safetensors"], "--mask"),
])
def test_cli_lca_bad_input_is_one_line_exit_2_and_no_run_folder(run_cli, tmp_path, args, message):
    out = tmp_path / "runs"
    code, stdout, stderr = run_cli("lca", *FAST, *args, "--out", out)
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    assert not out.exists()


def test_cli_lca_mask_of_another_model_is_refused(run_cli, tmp_path):
    from ticketlab.io import save_tensors

    mask_file = tmp_path / "mask.safetensors"
    save_tensors(mask_file, {"convs.0.weight": torch.ones(3, 3, dtype=torch.bool)})
    code, _, stderr = run_cli("lca", *FAST, "--mask", mask_file, "--out", tmp_path / "runs")
    assert code == 2 and "not prunable weights of this model" in stderr
    assert not (tmp_path / "runs").exists()


def test_per_parameter_rows_are_streamed_in_chunks_and_survive_resume(tmp_path):
    spec = small(lca_parameter_chunk=4)
    setup = Setup.prepare(spec)

    def train(unit, stop_at=None):
        model = setup.build_model(0)
        rec = recorder(spec.lca, setup, model, unit=unit)

        def kill(step, m):
            if step == stop_at:
                raise Stop

        fit(model, setup.data, spec.train, seed=0, start=0, end=setup.total_steps, schedule=setup.schedule,
            checkpoints=Checkpoints(unit, 5), callbacks=rec, on_step=kill)
        rec.flush()
        return rec

    whole = train(Unit(tmp_path / "whole"))
    files = sorted(p.name for p in (tmp_path / "whole" / "parameters").glob("*.safetensors"))
    assert files == [f"steps-{a:07d}-{a + 3:07d}.safetensors" for a in range(1, 25, 4)]
    parts = Unit(tmp_path / "whole" / "parameters")
    rows = torch.cat([parts.read(f)["lca"] for f in files])
    assert rows.shape == (24, whole.param_total.numel())
    assert torch.allclose(rows.double().sum(1), whole.step_table()[:, 4], atol=1e-6)
    assert torch.allclose(rows.double().sum(0), whole.param_total, atol=1e-6)

    with pytest.raises(Stop):
        train(Unit(tmp_path / "resumed"), stop_at=17)
    train(Unit(tmp_path / "resumed"))
    again = Unit(tmp_path / "resumed" / "parameters")
    for f in files:
        assert torch.equal(again.read(f)["lca"], parts.read(f)["lca"]), f


def test_experiment_keeps_the_streamed_parameter_files(tmp_path):
    spec = small(lca_parameter_chunk=10)
    run(spec, out=tmp_path, progress=False)
    seed = tmp_path / f"lca-{specs.spec_hash(spec)}" / "seed-0"
    assert Unit(seed).is_done() and not (seed / "checkpoint").exists()
    names = sorted(p.name for p in (seed / "parameters").glob("*.safetensors"))
    assert names == ["steps-0000001-0000010.safetensors", "steps-0000011-0000020.safetensors", "steps-0000021-0000024.safetensors"]
    totals = Unit(seed).read("lca.safetensors")
    rows = torch.cat([Unit(seed / "parameters").read(n)["lca"] for n in names])
    assert torch.allclose(rows[:, :16 * 256].sum(0).view(16, 256), totals["total.hidden.0.weight"], atol=1e-5)


@pytest.mark.heavy
def test_lca_results_do_not_depend_on_workers(tmp_path):
    """Each seed is its own unit: two worker processes train them side by side, with the same numbers."""
    import ticketlab

    tables = []
    for workers in (1, 2):
        out = tmp_path / f"workers-{workers}"
        ticketlab.lca(**SMALL, seeds=(0, 1), workers=workers, out=str(out), progress=False)
        (folder,) = out.glob("lca-*")
        tables.append((folder / "results.csv").read_text())
    assert tables[0] == tables[1] and len(tables[0].splitlines()) == 1 + 2 * 3


@pytest.mark.slow
def test_mnist1d_mlp_lca_about_half_the_parameters_help(tmp_path):
    """Lan et al.: 'barely over 50% of parameters help at any iteration'. MNIST-1D MLP, 1500 Adam steps."""
    data = Path(__file__).resolve().parents[1] / "data"
    spec = specs.from_mapping(LCASpec, dict(data_dir=str(data), model="mnist1d_mlp", steps="1500it", eval_every="500it"))
    run(spec, out=tmp_path, progress=False)
    summary = json.loads((tmp_path / f"lca-{specs.spec_hash(spec)}" / "summary.json").read_text())
    print(f"\nMNIST-1D LCA: fraction helped {summary['fraction_helped']:.4f}, relative error {summary['relative_error']:.2e}, "
          f"test accuracy {summary['test_accuracy']:.3f}")
    assert summary["relative_error"] < 1e-2
    assert 0.45 < summary["fraction_helped"] < 0.6
    assert summary["by_seed"][0]["steps_over_tolerance"] == 0
