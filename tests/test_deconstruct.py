"""The deconstruct grid: criteria x mask-1 actions x seeds, mask-0 actions, untrained supermasks, resume, CLI,
and the science checks on MNIST-1D (slow)."""

import json
import math
import statistics
import subprocess
from pathlib import Path

import pytest
import torch

from ticketlab import spec as specs
from ticketlab.data import load
from ticketlab.experiments.deconstruct import DeconstructSpec, run, table
from ticketlab.store import Unit

SMALL = dict(dataset="synthetic", model="mlp", widths=(32, 16), steps="40it", batch_size=50, eval_every="20it",
             levels=2, prune_fraction=0.5)


def small(**kw):
    return specs.from_mapping(DeconstructSpec, {**SMALL, **kw})


def folder(out, spec):
    return Path(out) / f"deconstruct-{specs.spec_hash(spec)}"


def cell(out, spec, criterion, action, seed, level, arm="ticket"):
    return Unit(folder(out, spec) / criterion / action / f"seed-{seed}" / f"level-{level:02d}" / arm)


def test_grid_rows_files_and_shared_dense_level(tmp_path):
    spec = small(criterion=("large_final", "random"), mask_one=("rewind", "signed_constant"), seeds=(0, 1))
    res = run(spec, out=tmp_path, progress=False)
    trained = res.where(phase="trained")
    dense = trained.where(criterion="dense")
    assert len(dense) == 2 and {r["level"] for r in dense} == {0}
    cells = {(r["criterion"], r["mask_one"]) for r in trained if r["level"] > 0}
    assert cells == {(c, a) for c in ("large_final", "random") for a in ("rewind", "signed_constant")}
    assert len(trained) == 2 + 2 * 2 * 2 * 2
    untrained = res.where(phase="untrained")
    assert len(untrained) == 2 * 2 * 2 * 2  # criteria x levels x seeds x (rewind, signed_constant) weights
    assert {r["mask_one"] for r in untrained} == {"rewind", "signed_constant"}
    for r in res:
        assert 0 <= r["test_accuracy"] <= 1 and 0 < r["weights_remaining"] <= 1
    remaining = sorted({round(r["weights_remaining"], 4) for r in trained}, reverse=True)
    assert remaining[0] == 1.0 and len(remaining) == 3
    out = folder(tmp_path, spec)
    files = {p.name for p in out.iterdir()}
    assert {"results.csv", "results.json", "summary.json", "accuracy-rewind.png", "accuracy-signed_constant.png",
            "untrained-rewind.png", "untrained-signed_constant.png"} <= files
    assert (out / "results.csv").read_text().splitlines()[0].startswith("criterion,mask_one,mask_zero,phase,level,weights_remaining,seed,test_accuracy")
    lines = table((Unit(out)).read("results.csv"))
    assert lines[1].split()[:2] == ["0", "100.00%"]
    assert {"trained, mask-1 rewind:", "trained, mask-1 signed_constant:", "untrained, weights rewind:",
            "untrained, weights signed_constant:"} <= set(lines)
    assert lines[3].split()[2:] == ["large_final", "random"]
    # masks: each criterion its own nested chain; the same criterion's level-1 mask does not depend on the action
    m_rewind = cell(tmp_path, spec, "large_final", "rewind", 0, 1).read("mask.safetensors")
    m_const = cell(tmp_path, spec, "large_final", "signed_constant", 0, 1).read("mask.safetensors")
    m_random = cell(tmp_path, spec, "random", "rewind", 0, 1).read("mask.safetensors")
    assert all(torch.equal(m_rewind[k], m_const[k]) for k in m_rewind)
    assert any(not torch.equal(m_rewind[k], m_random[k]) for k in m_rewind)


def test_start_weights_follow_the_mask_one_action(tmp_path):
    spec = small(criterion=("large_final",), mask_one=("rewind", "signed_constant", "reshuffle"), untrained=())
    run(spec, out=tmp_path, progress=False)
    init = Unit(folder(tmp_path, spec) / "seed-0" / "level-00" / "dense").read("start.safetensors")
    for level in (1, 2):
        for action in ("rewind", "signed_constant", "reshuffle"):
            u = cell(tmp_path, spec, "large_final", action, 0, level)
            mask, start = u.read("mask.safetensors"), u.read("start.safetensors")
            for n, m in mask.items():
                kept = m
                if action == "rewind":
                    assert torch.equal(start[n], init[n] * m)
                elif action == "signed_constant":
                    # +-sigma with the init's sign, sigma the population std of the layer's init, by hand
                    assert torch.allclose(start[n][kept], torch.sign(init[n][kept]) * population_std(init[n]), rtol=1e-5, atol=0)
                    assert set(start[n][kept].abs().tolist()) == {start[n][kept].abs()[0].item()}
                else:
                    assert torch.equal(start[n][kept].sort().values, init[n][kept].sort().values)
                assert (start[n][~kept] == 0).all()
            assert torch.equal(start["fc.bias"], init["fc.bias"])


@pytest.mark.parametrize("optimizer,extra", [("sgd", dict(momentum=0.9, weight_decay=1e-2, lr=0.05)), ("adam", {})])
def test_freeze_init_mask_zero_keeps_pruned_weights_at_init_while_training(tmp_path, optimizer, extra):
    spec = small(criterion=("large_final",), mask_zero="freeze_init", untrained=(), optimizer=optimizer, **extra)
    res = run(spec, out=tmp_path, progress=False)
    assert {r["mask_zero"] for r in res if r["level"] > 0} == {"freeze_init"}
    init = Unit(folder(tmp_path, spec) / "seed-0" / "level-00" / "dense").read("start.safetensors")
    for level in (1, 2):
        u = cell(tmp_path, spec, "large_final", "rewind", 0, level)
        mask, final = u.read("mask.safetensors"), u.read("final.safetensors")
        for n, m in mask.items():
            assert (~m).any()
            assert torch.equal(final[n][~m], init[n][~m]), (level, n)
            assert not torch.equal(final[n][m], init[n][m])


def population_std(w: torch.Tensor) -> float:
    """sqrt(mean((w - mean(w))^2)) in double precision, written out (not the library's `layer_sigma`)."""
    values = [float(v) for v in w.flatten()]
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def mlp_by_hand(weights: dict, x: torch.Tensor, hidden: int) -> torch.Tensor:
    """The MLP's logits written out in float64: flatten, (W h + b, ReLU) per hidden layer, then `fc`."""
    h = x.flatten(1).double()
    for i in range(hidden):
        h = torch.clamp(h @ weights[f"hidden.{i}.weight"].double().T + weights[f"hidden.{i}.bias"].double(), min=0)
    return h @ weights["fc.weight"].double().T + weights["fc.bias"].double()


def test_untrained_rows_are_the_mask_on_the_init_evaluated_without_training(tmp_path):
    spec = small(criterion=("large_final_same_sign",), untrained=("signed_constant",))
    res = run(spec, out=tmp_path, progress=False)
    data = load("synthetic")
    init = Unit(folder(tmp_path, spec) / "seed-0" / "level-00" / "dense").read("start.safetensors")
    rows = res.where(phase="untrained")
    assert sorted(r["level"] for r in rows) == [1, 2]
    for row in rows:
        mask = cell(tmp_path, spec, "large_final_same_sign", "rewind", 0, row["level"]).read("mask.safetensors")
        # signed constant: sign(w_i) x the layer's init std on kept weights, 0 on pruned ones; biases as at init
        weights = {k: (torch.sign(v) * population_std(v) * mask[k] if k in mask else v) for k, v in init.items()}
        logits = mlp_by_hand(weights, data.test_x, hidden=2)
        correct = int((logits.argmax(1) == data.test_y).sum())
        top2 = logits.topk(2, dim=1).values
        near_ties = int((top2[:, 0] - top2[:, 1] < 1e-4).sum())   # float32 vs float64 may break these either way
        assert abs(row["test_accuracy"] * len(data.test_y) - correct) <= near_ties, (row, correct, near_ties)
        # mean cross-entropy: logsumexp of the logits minus the true class's logit
        loss = float((torch.logsumexp(logits, 1) - logits.gather(1, data.test_y[:, None])[:, 0]).mean())
        assert row["test_loss"] == pytest.approx(loss, rel=1e-4)
        assert row["weights_remaining"] == pytest.approx(sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values()))


def test_rerun_resumes_without_retraining_and_a_corrupt_unit_is_recomputed(tmp_path):
    spec = small(criterion=("large_final", "small_final"))
    first = run(spec, out=tmp_path, progress=False)
    u = cell(tmp_path, spec, "small_final", "rewind", 0, 2)
    stamp = (u.path / "final.safetensors").stat().st_mtime_ns
    again = run(spec, out=tmp_path, progress=False)
    assert (u.path / "final.safetensors").stat().st_mtime_ns == stamp
    key = lambda r: (r["criterion"], r["phase"], r["mask_one"], r["level"], r["test_accuracy"], r["test_loss"])
    assert [key(r) for r in again] == [key(r) for r in first]
    path = u.path / "final.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    third = run(spec, out=tmp_path, progress=False)
    assert [key(r) for r in third] == [key(r) for r in first]
    assert Unit(u.path).is_done()


# ----------------------------------------------------------------------------------------------- CLI
FAST = ["--dataset", "synthetic", "--model", "mlp", "--widths", "16", "--steps", "20it", "--batch-size", "100",
        "--eval-every", "10it", "--levels", "1", "--no-progress"]


def cli(python, env, *args):
    return subprocess.run([python, "-m", "ticketlab", *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.heavy
def test_cli_deconstruct_smoke(python, cli_env, tmp_path):
    r = cli(python, cli_env, "deconstruct", *FAST, "--criterion", "large_final,movement_same_sign", "--mask-one", "rewind,constant",
            "--mask-zero", "freeze_init_zero_mask", "--rescale", "true", "--seeds", "0,1", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "large_final" in r.stdout and "movement_same_sign" in r.stdout and "untrained supermask" in r.stdout
    run_dir = next(tmp_path.iterdir())
    rows = json.loads((run_dir / "results.json").read_text())
    assert {r["mask_one"] for r in rows if r["phase"] == "trained" and r["level"] == 1} == {"rewind", "constant"}
    assert {r["mask_zero"] for r in rows if r["phase"] == "trained" and r["level"] == 1} == {"freeze_init_zero_mask"}
    assert (run_dir / "accuracy-constant.png").read_bytes()[:4] == b"\x89PNG"
    help_text = cli(python, cli_env, "deconstruct", "--help").stdout
    for flag in ("--criterion", "--mask-one", "--mask-zero", "--rescale", "--untrained", "--levels", "--seeds"):
        assert flag in help_text


@pytest.mark.parametrize("args,message", [
    (["--criterion", "largest"], "unknown criterion 'largest'; valid: large_final, large_final_diff_sign"),
    (["--criterion", "large_final,nope"], "unknown criterion 'nope'; valid: "),
    (["--mask-one", "rewind,flip"], "unknown mask-1 action 'flip'; valid: constant, reinit, reshuffle, rewind, signed_constant"),
    (["--mask-zero", "keep"], "unknown mask-0 action 'keep'; valid: freeze_init, freeze_init_zero_mask, zero"),
    (["--untrained", "constant"], "unknown untrained weights 'constant'; valid: rewind, signed_constant"),
    (["--rewind", "500it"], "is not before the end of training"),
    (["--model", "resnet999"], "unknown model 'resnet999'"),
])
def test_cli_deconstruct_bad_input_exit_2_and_no_run_folder(run_cli, tmp_path, args, message):
    out = tmp_path / "runs"
    code, stdout, stderr = run_cli("deconstruct", *FAST, *args, "--out", out)
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and message in stderr and "Traceback" not in stderr, stderr
    assert not out.exists()


# ------------------------------------------------------------------------------------------- science
DATA_DIR = str(Path(__file__).resolve().parents[1] / "data")


@pytest.mark.slow
def test_mnist1d_large_final_beats_small_final_and_random_at_10_to_25_percent(tmp_path):
    """Zhou et al. Fig. 2 on the MNIST-1D MLP (100-100), 3 seeds: the large_final mask, rewound to the init,
    beats small_final and random at 10-25% of the weights remaining (mean over seeds and those levels)."""
    spec = specs.from_mapping(DeconstructSpec, dict(data_dir=DATA_DIR, steps="1000it", eval_every="1000it", levels=5,
                                                    prune_fraction=0.4, criterion=("large_final", "small_final", "random"),
                                                    untrained=(), seeds=(0, 1, 2)))
    res = run(spec, out=tmp_path, progress=False)
    trained = res.where(phase="trained")
    levels = sorted({(r["level"], r["weights_remaining"]) for r in trained})
    print("\nlevel  remaining   " + "  ".join(f"{c:>12}" for c in ("large_final", "small_final", "random")))
    for level, remaining in levels:
        cells = []
        for c in ("large_final", "small_final", "random"):
            acc = [r["test_accuracy"] for r in trained if r["level"] == level and r["criterion"] in (c, "dense")]
            cells.append(f"{100 * statistics.fmean(acc):6.2f}±{100 * statistics.stdev(acc):4.2f}")
        print(f"{level:>5}  {100 * remaining:8.2f}%   " + "  ".join(f"{c:>12}" for c in cells))
    band = [r for r in trained if 0.10 <= r["weights_remaining"] <= 0.25]
    assert {r["level"] for r in band} == {4, 5}
    mean = {c: statistics.fmean(r["test_accuracy"] for r in band if r["criterion"] == c)
            for c in ("large_final", "small_final", "random")}
    print("10-25% remaining: " + ", ".join(f"{c} {100 * v:.2f}%" for c, v in mean.items()))
    assert mean["large_final"] > mean["small_final"] + 0.02
    assert mean["large_final"] > mean["random"] + 0.02


@pytest.mark.slow
def test_mnist1d_untrained_large_final_same_sign_supermask_is_far_above_chance(tmp_path):
    """Zhou et al. Section 5: the large_final_same_sign mask applied to the untrained signed-constant init
    classifies far above chance (10% on MNIST-1D) without any training; 3 seeds."""
    spec = specs.from_mapping(DeconstructSpec, dict(data_dir=DATA_DIR, steps="1000it", eval_every="1000it", levels=3,
                                                    prune_fraction=0.4, criterion=("large_final_same_sign", "random"),
                                                    untrained=("rewind", "signed_constant"), seeds=(0, 1, 2)))
    res = run(spec, out=tmp_path, progress=False)
    un = res.where(phase="untrained")
    print("\nuntrained supermask accuracy (mean ± std over 3 seeds)")
    print("level  remaining   criterion               weights           accuracy")
    table = {}
    for r in un:
        table.setdefault((r["level"], r["weights_remaining"], r["criterion"], r["mask_one"]), []).append(r["test_accuracy"])
    for (level, remaining, c, w), acc in sorted(table.items()):
        print(f"{level:>5}  {100 * remaining:8.2f}%   {c:<22}  {w:<16}  {100 * statistics.fmean(acc):6.2f}±{100 * statistics.stdev(acc):4.2f}%")
    best = max(statistics.fmean(acc) for (lv, _, c, w), acc in table.items() if c == "large_final_same_sign" and w == "signed_constant")
    chance = max(statistics.fmean(acc) for (lv, _, c, w), acc in table.items() if c == "random")
    print(f"best large_final_same_sign signed-constant: {100 * best:.2f}%  (best random mask: {100 * chance:.2f}%, chance 10%)")
    assert best >= 0.25, "far above chance: at least 2.5x the 10% of guessing"
    for level in (1, 2, 3):
        lfss = table[next(k for k in table if k[0] == level and k[2] == "large_final_same_sign" and k[3] == "signed_constant")]
        assert statistics.fmean(lfss) > 0.15


@pytest.mark.heavy
@pytest.mark.parametrize("mask_zero", ["zero", "freeze_init"])
def test_grid_results_do_not_depend_on_stacking_or_workers(tmp_path, mask_zero):
    import ticketlab

    settings = dict(dataset="synthetic", model="mlp", widths=(16,), steps="40it", eval_every="20it", levels=2,
                    criterion=("large_final", "random"), mask_one=("rewind", "signed_constant"), mask_zero=mask_zero,
                    seeds=(0, 1))
    key = lambda r: (r["criterion"], r["mask_one"], r["phase"], r["level"], r["seed"])
    tables = [{key(r): (r["test_accuracy"], r["test_loss"]) for r in
               ticketlab.deconstruct(out=str(tmp_path / f"w{w}b{b}"), workers=w, max_batch=b, **settings)}
              for w, b in ((1, 1), (1, 4), (2, 3))]
    assert len(tables[0]) == 2 + 2 * 2 * 2 * 2 + 2 * 2 * 2 * 2  # dense, trained cells, untrained evaluations
    assert tables[0] == tables[1] == tables[2]
