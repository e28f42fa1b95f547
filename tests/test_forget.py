"""Forget-and-relearn: the forgetting operations (`sparse/forget.py`), the `forget` experiment's units and
files, the targeted-forgetting probe, resume after SIGKILL, bad names, and (slow) the probe's finding on MNIST-1D."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ticketlab import models
from ticketlab import spec as specs
from ticketlab.errors import UserError
from ticketlab.experiments.forget import PROBE_COLUMNS, ForgetSpec, run
from ticketlab.sparse.count import kept_count
from ticketlab.sparse.forget import Forgetting, forget_, freeze_mask, layer_names
from ticketlab.store import Unit

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(dataset="synthetic", model="mlp", widths=(32, 24), steps="40it", batch_size=50, eval_every="20it",
             generations=2, lr=5e-3)


def small(**kw):
    return specs.from_mapping(ForgetSpec, {**SMALL, **kw})


def unit(out, spec, seed, method, generation):
    folder = Path(out) / f"forget-{specs.spec_hash(spec)}" / f"seed-{seed}"
    if method == "none":
        return Unit(folder / "gen-00")
    if method == "long":
        return Unit(folder / "long")
    return Unit(folder / method / f"gen-{generation:02d}")


def trained_like(name="mlp", seed=3, **kw):
    """A model whose every parameter (biases included) is nonzero and away from its init, as after training."""
    shape = (1, 40) if name == "mnist1d_cnn_bn" else (40,)
    model = models.build(name, shape, 10, seed=seed, widths=(16, 12) if name == "mlp" else None, **kw)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        for n, b in model.named_buffers():
            if "running" in n:
                b.add_(0.5 + torch.rand(b.shape, generator=g))
            elif "num_batches" in n:
                b.add_(7)
    return model


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def init_of(name="mlp"):
    shape = (1, 40) if name == "mnist1d_cnn_bn" else (40,)
    return state(models.build(name, shape, 10, seed=0, widths=(16, 12) if name == "mlp" else None))


# ------------------------------------------------------------------------------------------ the operations
@pytest.mark.parametrize("op,touched", [
    (Forgetting("llf"), ["fc.weight", "fc.bias"]),
    (Forgetting("llf", reset_from="hidden.1"), ["hidden.1.weight", "hidden.1.bias", "fc.weight", "fc.bias"]),
    (Forgetting("llf", reset_from="hidden"), ["hidden.0.weight", "hidden.0.bias", "hidden.1.weight", "hidden.1.bias",
                                               "fc.weight", "fc.bias"]),
    (Forgetting("ke"), ["hidden.0.weight", "hidden.0.bias", "hidden.1.weight", "hidden.1.bias", "fc.weight"]),
    (Forgetting("ke", split_mode="wels"), ["hidden.0.weight", "hidden.1.weight", "fc.weight"]),
    (Forgetting("random"), ["hidden.0.weight", "hidden.1.weight", "fc.weight"]),
    (Forgetting("random", redraw="zero", keep=0.3), ["hidden.0.weight", "hidden.1.weight", "fc.weight"]),
    (Forgetting("imp"), ["hidden.0.weight", "hidden.0.bias", "hidden.1.weight", "hidden.1.bias", "fc.weight", "fc.bias"]),
])
def test_exactly_the_named_parameters_change_and_the_rest_is_bit_for_bit_equal(op, touched):
    model = trained_like()
    before, init = state(model), init_of()
    masks = forget_(model, op, init_state=init, seed=0, generation=1)
    after = state(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == touched, op
    for name, keep in masks.items():
        if op.method == "imp":   # kept entries rewound to init, the rest zero
            assert torch.equal(after[name][keep], init[name][keep]) and not after[name][~keep].any()
        else:                    # kept entries untouched, the others redrawn
            assert torch.equal(after[name][keep], before[name][keep])
            fresh = after[name][~keep]
            assert (fresh != before[name][~keep]).all() or name.endswith("bias")
            if op.redraw == "zero":
                assert not fresh.any()


def test_the_redraw_is_the_models_own_init():
    """llf with the default redraw puts in what `models.initialize` draws: kaiming weights, zero biases."""
    model = trained_like()
    forget_(model, Forgetting("llf", reset_from="hidden.1"), seed=0, generation=1)
    assert not model.fc.bias.any() and not model.hidden[1].bias.any()
    w = model.hidden[1].weight.detach()
    assert abs(float(w.std()) - math.sqrt(2 / w.shape[1])) < 0.25 * math.sqrt(2 / w.shape[1])


@pytest.mark.parametrize("method,keep", [("random", None), ("random", 0.37), ("imp", None), ("imp", 0.81)])
def test_kept_fractions_are_the_count_rule_within_one_weight(method, keep):
    model = trained_like()
    op = Forgetting(method, keep=keep)
    masks = forget_(model, op, init_state=init_of(), seed=0, generation=1)
    for name in ("hidden.0.weight", "hidden.1.weight", "fc.weight"):
        n, kept = masks[name].numel(), int(masks[name].sum())
        fraction = op.layer_keep(name == "fc.weight")
        assert kept == kept_count(n, fraction) and abs(kept - fraction * n) <= 1, (name, kept, fraction * n)
    assert op.layer_keep(True) == pytest.approx(1 - (1 - op.kept_fraction) * 0.5), "the output layer forgets half as much"


def test_imp_keeps_the_largest_weights():
    model = trained_like()
    w = model.hidden[0].weight.detach().abs().clone()
    masks = forget_(model, Forgetting("imp"), init_state=init_of(), seed=0, generation=1)
    m = masks["hidden.0.weight"]
    assert w[m].min() >= w[~m].max()


def test_kels_keeps_the_first_units_and_inputs():
    model = trained_like()
    masks = forget_(model, Forgetting("ke", split_rate=0.8), seed=0, generation=1)
    expect = {"hidden.0.weight": (math.ceil(0.8 * 16), 40),   # the first layer keeps all its inputs
              "hidden.1.weight": (math.ceil(0.8 * 12), math.ceil(0.8 * 16)),
              "fc.weight": (10, math.ceil(0.8 * 12))}          # the output layer keeps all its outputs
    for name, (rows, cols) in expect.items():
        m = masks[name]
        assert m[:rows, :cols].all() and int(m.sum()) == rows * cols, name
    assert int(masks["hidden.0.bias"].sum()) == math.ceil(0.8 * 16) and masks["hidden.0.bias"][:13].all()


@pytest.mark.parametrize("method,options", [("llf", {}), ("ke", {}), ("ke", {"split_mode": "wels"}), ("random", {})])
def test_fix_seed_redraws_the_same_values_every_generation(method, options):
    def draw(generation, fix):
        model = trained_like()
        masks = forget_(model, Forgetting(method, fix_seed=fix, **options), seed=0, generation=generation)
        return state(model), masks

    for fix in (True, False):
        (a, ma), (b, mb) = draw(1, fix), draw(2, fix)
        for name in ma:
            both = ~ma[name] & ~mb[name]   # entries redrawn in both generations
            if name.endswith("bias"):
                continue   # biases are redrawn to zero either way
            assert both.any()
            assert torch.equal(a[name][both], b[name][both]) == fix, (method, fix, name)


@pytest.mark.parametrize("mode", ["kels", "wels"])
def test_the_fit_hypothesis_is_the_same_every_generation(mode):
    masks = [forget_(trained_like(seed=s), Forgetting("ke", split_mode=mode), seed=0, generation=g)
             for s, g in ((3, 1), (4, 2), (5, 7))]
    for other in masks[1:]:
        assert all(torch.equal(masks[0][k], other[k]) for k in masks[0])
    if mode == "wels":   # Bernoulli(r): about r kept, and another seed draws another hypothesis
        m = masks[0]["hidden.0.weight"]
        assert abs(float(m.float().mean()) - 0.8) < 0.05
        again = forget_(trained_like(), Forgetting("ke", split_mode="wels"), seed=1, generation=1)
        assert not torch.equal(again["hidden.0.weight"], m)


def test_random_masks_differ_between_generations_and_repeat_for_the_same_one():
    a = forget_(trained_like(), Forgetting("random"), seed=0, generation=1)
    b = forget_(trained_like(), Forgetting("random"), seed=0, generation=1)
    c = forget_(trained_like(), Forgetting("random"), seed=0, generation=2)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["hidden.0.weight"], c["hidden.0.weight"])


def test_batchnorm_is_kept_unless_reset_bn():
    model = trained_like("mnist1d_cnn_bn")
    before = state(model)
    forget_(model, Forgetting("llf", reset_from="conv3"), seed=0, generation=1)
    after = state(model)
    assert [k for k in before if not torch.equal(before[k], after[k])] == ["conv3.weight", "fc.weight", "fc.bias"]

    model = trained_like("mnist1d_cnn_bn")
    forget_(model, Forgetting("llf", reset_from="conv3", reset_bn=True), seed=0, generation=1)
    after = state(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["conv3.weight", "bn3.weight", "bn3.bias", "bn3.running_mean", "bn3.running_var",
                       "bn3.num_batches_tracked", "fc.weight", "fc.bias"]
    assert (after["bn3.weight"] == 1).all() and not after["bn3.bias"].any() and (after["bn3.running_var"] == 1).all()

    model = trained_like("mnist1d_cnn_bn")
    forget_(model, Forgetting("imp", reset_bn=True), init_state=init_of("mnist1d_cnn_bn"), seed=0, generation=1)
    after = state(model)
    assert all((after[f"bn{i}.weight"] == 1).all() and not after[f"bn{i}.bias"].any() for i in (1, 2, 3))


def test_freeze_masks_hold_the_right_part():
    model = trained_like()
    masks = forget_(model, Forgetting("llf", reset_from="hidden.1"), seed=0, generation=1)
    kept = freeze_mask(model, masks, "kept")
    assert not kept["hidden.0.weight"].any() and kept["fc.weight"].all(), "freeze kept: only the forgotten part trains"
    reset = freeze_mask(model, masks, "reset")
    assert reset["hidden.0.weight"].all() and not reset["fc.weight"].any()
    assert freeze_mask(model, masks, "none") is None
    start = state(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    kept.apply_(model)
    assert torch.equal(model.hidden[0].weight, start["hidden.0.weight"]) and not torch.equal(model.fc.weight, start["fc.weight"])


def test_unknown_names_list_the_valid_ones():
    model = trained_like()
    assert layer_names(model) == ["hidden", "hidden.0", "hidden.1", "fc"]
    with pytest.raises(UserError, match=r"unknown layer 'layer4' of MLP; valid: hidden, hidden.0, hidden.1, fc$"):
        forget_(model, Forgetting("llf", reset_from="layer4"), seed=0, generation=1)
    with pytest.raises(UserError, match=r"unknown forgetting method 'prune'; valid: llf, ke, random, imp"):
        forget_(model, Forgetting("prune"), seed=0, generation=1)


@pytest.mark.parametrize("argv,message", [
    (["--methods", "llf,forgetful"], "unknown forgetting method 'forgetful'; valid: "),
    (["--reset-from", "layer4"], "--reset-from: unknown layer 'layer4' of MLP; valid: hidden, hidden.0, hidden.1, fc"),
    (["--reset-from", "layer4", "--methods", "random"], "--reset-from: unknown layer 'layer4'"),
    (["--split-mode", "kelz"], "unknown split mode 'kelz'; valid: kels, wels"),
    (["--freeze", "all"], "unknown freeze 'all'; valid: "),
    (["--probe", "targeted"], "--probe targeted with --groups labels needs mislabeled examples"),
    (["--probe", "targeted", "--random-labels", "0.0001"], "randomises no label of the 600 training examples"),
])
def test_bad_names_exit_2_with_one_line(run_cli, tmp_path, argv, message):
    code, out, err = run_cli("forget", "--dataset", "synthetic", "--model", "mlp", "--widths", "16,16", "--steps", "10it",
                             "--out", tmp_path / "out", "--no-progress", *argv)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_help_lists_every_flag():
    import contextlib
    import io

    from ticketlab import cli

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        cli.main(["forget", "--help"])
    for flag in ("--methods", "--generations", "--seeds", "--probe", "--probe-every", "--groups", "--reset-from", "--redraw",
                 "--reset-bn", "--split-rate", "--split-mode", "--keep", "--output-rate-factor", "--fix-seed", "--freeze",
                 "--random-labels"):
        assert flag in buf.getvalue(), flag


# ---------------------------------------------------------------------------------------- the experiment
def test_units_files_and_results(tmp_path, run_cli):
    spec = small(seeds=(0, 1), random_labels=0.1)
    res = run(spec, out=tmp_path)
    folder = tmp_path / f"forget-{specs.spec_hash(spec)}"
    header = (folder / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["method", "generation", "seed", "test_accuracy", "train_accuracy", "train_accuracy_clean",
                          "train_accuracy_mislabeled"]
    assert len(res) == 2 * (1 + 4 * 2 + 1)
    assert {(r["method"], r["generation"]) for r in res} == {("none", 0), ("long", 2)} | {
        (m, g) for m in ("llf", "ke", "random", "imp") for g in (1, 2)}
    assert all(0 <= r["train_accuracy_mislabeled"] <= 1 and r["train_steps"] == (120 if r["method"] == "long" else 40)
               for r in res)
    assert (folder / "accuracy.png").read_bytes()[:4] == b"\x89PNG" and not (folder / "probes.csv").exists()
    # generation g starts from the operation applied to generation g-1's final weights
    for method in ("llf", "ke", "random", "imp"):
        for g in (1, 2):
            previous = unit(tmp_path, spec, 0, "none" if g == 1 else method, g - 1).read("final.safetensors")
            u = unit(tmp_path, spec, 0, method, g)
            start, keep = u.read("start.safetensors"), u.read("keep.safetensors")
            init = unit(tmp_path, spec, 0, "none", 0).read("start.safetensors")
            for name, w in previous.items():
                if name not in keep:
                    assert torch.equal(start[name], w), (method, g, name)
                elif method == "imp":
                    assert torch.equal(start[name], torch.where(keep[name], init[name], torch.zeros_like(w)))
                else:
                    assert torch.equal(start[name][keep[name]], w[keep[name]])
    # KE's fit hypothesis is stored in every generation, and is the same
    k1, k2 = (unit(tmp_path, spec, 1, "ke", g).read("keep.safetensors") for g in (1, 2))
    assert all(torch.equal(k1[k], k2[k]) for k in k1)
    code, out, _ = run_cli("show", folder)
    assert code == 0 and "train acc mislabeled" in out and out.count("\n") >= 10 and "long" in out


def test_the_probe_records_groups_without_changing_training(tmp_path):
    spec = small(generations=0, seeds=(0,), random_labels=0.2, probe="targeted", probe_every="10it",
                 methods=("random", "imp"))
    res = run(spec, out=tmp_path)
    plain = run(small(generations=0, seeds=(0,), random_labels=0.2, methods=("random", "imp")), out=tmp_path / "plain")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(res) == strip(plain), "the probe forgets copies only"
    a = unit(tmp_path, spec, 0, "none", 0).read("final.safetensors")
    b = unit(tmp_path / "plain", small(generations=0, seeds=(0,), random_labels=0.2, methods=("random", "imp")),
             0, "none", 0).read("final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    folder = tmp_path / f"forget-{specs.spec_hash(spec)}"
    lines = (folder / "probes.csv").read_text().splitlines()
    assert lines[0].split(",") == list(PROBE_COLUMNS)
    rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    assert len(rows) == 4 * 2 * 2   # steps 10, 20, 30, 40 x two methods x two groups
    assert {r["group"] for r in rows} == {"clean", "mislabeled"}
    assert {int(r["size"]) for r in rows if r["group"] == "mislabeled"} == {120}   # 0.2 of 600
    assert (folder / "probes.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((folder / "summary.json").read_text())
    assert {(d["method"], d["group"]) for d in summary["probe_drops"]} == {
        (m, g) for m in ("random", "imp") for g in ("clean", "mislabeled")}


def test_margin_groups_take_the_lowest_tenth(tmp_path):
    spec = small(generations=0, probe="targeted", probe_every="20it", groups="margin", methods=("random",))
    run(spec, out=tmp_path)
    lines = (tmp_path / f"forget-{specs.spec_hash(spec)}" / "probes.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    assert {(r["group"], int(r["size"])) for r in rows} == {("rest", 540), ("hard", 60)}
    from ticketlab.instruments.targeted import hardest, margins

    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.5]])
    y = torch.tensor([0, 2, 1])
    assert margins(logits, y).tolist() == [1.0, -2.0, 0.0]
    assert hardest(logits, y, 0.34).tolist() == [False, True, False]


def test_freeze_kept_trains_only_the_forgotten_entries(tmp_path):
    spec = small(generations=1, methods=("random",), freeze="kept")
    run(spec, out=tmp_path)
    u = unit(tmp_path, spec, 0, "random", 1)
    start, final, keep = u.read("start.safetensors"), u.read("final.safetensors"), u.read("keep.safetensors")
    for name in start:
        if name in keep:
            assert torch.equal(final[name][keep[name]], start[name][keep[name]])
            assert not torch.equal(final[name][~keep[name]], start[name][~keep[name]])
        else:
            assert torch.equal(final[name], start[name]), name


def test_long_baseline_trains_the_whole_budget_with_a_stretched_schedule(tmp_path):
    spec = small(generations=2, methods=("llf",), schedule="cosine")
    run(spec, out=tmp_path)
    metrics = unit(tmp_path, spec, 0, "long", 2).read("metrics.jsonl")
    assert metrics[-1]["step"] == 120
    lr = {r["step"]: r["lr"] for r in metrics}
    assert lr[60] == pytest.approx(0.5 * 5e-3 * (1 + math.cos(math.pi * 59 / 120)))
    g1 = unit(tmp_path, spec, 0, "llf", 1).read("metrics.jsonl")
    assert g1[0]["step"] == 0 and g1[-1]["step"] == 40, "each generation: a fresh schedule"


# --------------------------------------------------------------------------------------------- SIGKILL
KILL = ["--dataset", "synthetic", "--model", "mlp", "--widths", "256,256", "--steps", "600it", "--batch-size", "60",
        "--eval-every", "50it", "--checkpoint-every", "50it", "--generations", "2", "--methods", "random,ke",
        "--random-labels", "0.1", "--probe", "targeted", "--probe-every", "100it", "--lr", "0.002", "--workers", "1",
        "--no-progress"]


def _cli(python, env, out):
    return subprocess.Popen([python, "-m", "ticketlab", "forget", *KILL, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_when(proc, pattern: str, out: Path):
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        found = list(out.glob(pattern))
        if found:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return found[0].parent.parent
        time.sleep(0.005)
    proc.wait()
    return None


@pytest.mark.heavy
def test_sigkill_mid_generation_then_resume_is_bit_identical(tmp_path, python, cli_env):
    ref = _cli(python, cli_env, tmp_path / "ref")
    assert ref.wait(timeout=600) == 0, ref.stderr.read().decode()
    ref_dir = next((tmp_path / "ref").iterdir())
    out = tmp_path / "killed"
    # killed twice: during generation 0 (with the probe's rows in its checkpoint), then mid-generation 1
    for pattern in ("forget-*/seed-0/gen-00/checkpoint/MANIFEST.json", "forget-*/seed-0/*/gen-01/checkpoint/MANIFEST.json"):
        killed_in = _kill_when(_cli(python, cli_env, out), pattern, out)
        assert killed_in is not None, f"finished before a checkpoint of {pattern} appeared; make it longer"
        assert not Unit(killed_in).is_done()
    resumed = _cli(python, cli_env, out)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()
    run_dir = next(out.iterdir())
    units = sorted(p.parent.relative_to(ref_dir) for p in ref_dir.glob("seed-*/**/MANIFEST.json") if "checkpoint" not in str(p))
    assert len(units) == 1 + 2 * 2 + 1
    for rel in units:
        for name in ("start.safetensors", "final.safetensors", "metrics.jsonl"):
            assert (ref_dir / rel / name).read_bytes() == (run_dir / rel / name).read_bytes(), (rel, name)
    assert (ref_dir / "probes.csv").read_bytes() == (run_dir / "probes.csv").read_bytes()
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(json.loads((ref_dir / "results.json").read_text())) == strip(json.loads((run_dir / "results.json").read_text()))


# ----------------------------------------------------------------------------------------------- science
@pytest.mark.slow
def test_targeted_forgetting_hurts_the_mislabeled_examples_more_on_mnist1d(tmp_path):
    """tools/targeted_forgetting.py: MNIST-1D with 10% random labels, 3 seeds, trained until the mislabeled
    examples are memorised; averaged over every probe and seed, random and IMP-style forgetting drop the
    mislabeled group's accuracy more than the clean group's."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "targeted_forgetting.py"), "--out", str(tmp_path),
                           "--data-dir", str(ROOT / "data"), "--json"], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["train_accuracy_mislabeled"] > 0.9, "the mislabeled examples must be memorised for the effect to show"
    for method in ("random", "imp"):
        drops = report["drops"][method]
        assert drops["mislabeled"] > drops["clean"], (method, drops)
