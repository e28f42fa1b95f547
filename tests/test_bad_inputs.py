"""Bad input, per subcommand, in-process through `cli.main(argv)`: absurd numbers, bad config and sweep
files, and settings that make no sense together. Every case must exit with code 2, print exactly one line
`ticketlab: error: ...` (no traceback) naming what was wrong, and write nothing under `--out`. Every check
happens before training, so the whole file runs in seconds."""

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from ticketlab import cli
from ticketlab import spec as specs
from ticketlab import steps

EXPERIMENTS = ("lottery", "deconstruct", "supermask", "lca", "stability", "earlybird", "forget", "prune-at-init", "sparse-train",
               "lr-range")
# the experiments with --prune-* settings (layer_prune_fractions; prune-at-init's for --allocation layerwise)
WITH_PRUNING = ("lottery", "deconstruct", "stability", "prune-at-init")
WITH_LEVELS = ("lottery", "deconstruct")
# a small valid run (synthetic data: 600 training samples, 6 iterations per epoch at batch 100); 30it is the
# 5 epochs earlybird's search needs at its default --eb-window
FAST = ["--dataset", "synthetic", "--model", "mlp", "--widths", "16", "--steps", "30it", "--batch-size", "100",
        "--eval-every", "10it", "--no-progress"]
TRAIN_SET = 600
TOO_BIG = "9" * 23   # past 2**64


def refused(capsys, out: Path, argv: list[str], message: str) -> str:
    """Run `ticketlab ARGV --out OUT` in this process and check the one-line refusal; returns the line."""
    code = cli.main([*argv, "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 2, (argv, code, stderr)
    assert stdout == "", stdout
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    assert lines[0].startswith("ticketlab: error: ") and "Traceback" not in stderr, stderr
    assert message in lines[0], (message, lines[0])
    assert not out.exists() or not any(out.iterdir()), f"{argv}: something was written under --out: {list(out.rglob('*'))}"
    return lines[0]


# ------------------------------------------------------------------------------- numbers, every experiment
NUMBERS = {
    "seeds overflow": (["--seeds", TOO_BIG], f"--seeds: must be <= {specs.SEED_LIMIT - 1}"),
    "seed 2**32": (["--seeds", f"0,{2**32}"], f"--seeds: must be <= {2**32 - 1}"),
    "data seed": (["--data-seed", str(2**32)], f"--data-seed: must be <= {2**32 - 1}"),
    "mnist1d seed": (["--mnist1d-seed", "9" * 20], "--mnist1d-seed: must be <= "),
    "threads": (["--threads", "9" * 20], f"--threads: must be <= {specs.COUNT_LIMIT}"),
    "workers": (["--workers", "9" * 20], f"--workers: must be <= {specs.COUNT_LIMIT}"),
    "max batch": (["--max-batch", "9" * 20], f"--max-batch: must be <= {specs.COUNT_LIMIT}"),
    "steps text": (["--steps", f"{TOO_BIG}it"], "is too long: at most 1000000000"),
    "steps digits": (["--steps", "9" * 5000 + "it"], "bad step"),
    "steps in iterations": (["--steps", f"{steps.MAX_ITERATIONS}ep"], f"is {steps.MAX_ITERATIONS * TRAIN_SET // 100} iterations"),
    "warmup text": (["--warmup", f"{TOO_BIG}ep"], "--warmup: step"),
    "widths overflow": (["--widths", "9" * 20], "--widths: must be <= "),
    "widths memory": (["--widths", "99999999"], "GiB of memory available"),
    "batch size": (["--batch-size", "99999999"], f"larger than the training set ({TRAIN_SET} samples of synthetic)"),
    "batch size after subsample": (["--batch-size", "400", "--subsample", "0.5"], "(300 samples of synthetic after --subsample)"),
    "eval every 0it": (["--eval-every", "0it"], "--eval-every 0it: must be at least one iteration"),
    "eval every 0ep": (["--eval-every", "0ep"], "--eval-every 0ep: must be at least one iteration"),
    "warmup at end": (["--warmup", "30it"], "--warmup 30it (30 iterations) is not before the end of training"),
    "warmup past end": (["--warmup", "500it"], "--warmup 500it (500 iterations) is not before the end of training"),
    "milestone past end": (["--schedule", "milestones", "--milestones", "10it,500it"], "--milestones: 500it (500 iterations)"),
    "milestone at end": (["--schedule", "milestones", "--milestones", "5ep"], "--milestones: 5ep (30 iterations)"),
    "nesterov adam": (["--optimizer", "adam", "--nesterov", "true"], "--nesterov true applies to --optimizer sgd only"),
    "nesterov no momentum": (["--optimizer", "sgd", "--nesterov", "true", "--momentum", "0"], "--nesterov true needs --momentum > 0"),
    "lr overflow": (["--lr", "1e400"], "--lr: expected a finite number"),
}


# cases whose check does not apply to an experiment, and the refusal it gives instead: lr-range sets the rate
# itself, so any --warmup or --milestones is refused, not only those past the end of training
NOT_APPLICABLE = {("lr-range", case): "lr-range sets the rate itself: leave --schedule, --warmup and --milestones unset"
                  for case in ("warmup at end", "warmup past end", "milestone past end", "milestone at end")}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("case", sorted(NUMBERS))
def test_absurd_numbers_and_nonsense_are_refused_before_anything_is_written(capsys, tmp_path, experiment, case):
    args, message = NUMBERS[case]
    refused(capsys, tmp_path / "out", [experiment, *FAST, *args], NOT_APPLICABLE.get((experiment, case), message))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_data_dir_that_is_a_file_is_refused(capsys, tmp_path, experiment):
    file = tmp_path / "data.bin"
    file.write_bytes(b"not a folder")
    refused(capsys, tmp_path / "out", [experiment, *FAST, "--data-dir", str(file)], f"--data-dir {file} is a file, not a folder")


@pytest.mark.parametrize("experiment", WITH_LEVELS)
def test_levels_are_bounded_by_the_limit_and_by_the_smallest_layer(capsys, tmp_path, experiment):
    refused(capsys, tmp_path / "out", [experiment, *FAST, "--levels", "99999999999999"], f"--levels: must be <= {specs.LEVEL_LIMIT}")
    # mlp with widths 16 on 256 inputs: hidden.0.weight has 4096 weights, 0.2 pruned per level, so level 40 keeps one
    line = refused(capsys, tmp_path / "out", [experiment, *FAST, "--levels", "200"], "--levels 200: hidden.0.weight (4096 weights")
    assert "use at most 40 levels" in line
    line = refused(capsys, tmp_path / "out", [experiment, *FAST, "--levels", "41", "--prune-scope", "global"], "keeps no weight after level 40")


def test_stability_ticket_levels_are_bounded_before_the_lottery_folder_is_written(capsys, tmp_path):
    out = tmp_path / "out"
    refused(capsys, out, ["stability", *FAST, "--ticket-levels", "999999"], f"--ticket-levels: must be <= {specs.LEVEL_LIMIT}")
    refused(capsys, out, ["stability", *FAST, "--ticket-levels", "0,41"], "--ticket-levels 41: hidden.0.weight")
    refused(capsys, out, ["stability", *FAST, "--interpolation-points", "9" * 12], "--interpolation-points: must be <= 10000")


def test_the_level_bound_is_exactly_the_last_level_that_keeps_a_weight():
    """check_levels lets through exactly the levels after which every layer keeps a weight (the count rule)."""
    import dataclasses

    from ticketlab import models
    from ticketlab.experiments.lottery import check_levels
    from ticketlab.sparse import level_kept
    from ticketlab.specs.lottery import LotterySpec

    probe = models.build("mlp", (1, 16, 16), 10, seed=0, widths=(16,))
    for fraction, output_fraction in ((0.2, 0.1), (0.5, 0.0), (0.05, 0.3)):
        prune = dataclasses.replace(LotterySpec().prune, prune_fraction=fraction, output_prune_fraction=output_fraction)
        sizes = {"hidden.0.weight": (4096, fraction), "fc.weight": (160, output_fraction)}
        last = min(next(level for level in range(10_000) if level_kept(n, f, level + 1) == 0)
                   for n, f in sizes.values() if f > 0)
        check_levels(last, "--levels", probe, prune)
        with pytest.raises(specs.UserError, match=f"use at most {last} levels"):
            check_levels(last + 1, "--levels", probe, prune)


def test_lca_layer_is_checked_by_lottery_as_by_lca(capsys, tmp_path):
    refused(capsys, tmp_path / "out", ["lca", *FAST, "--lca-layer", "nosuch"], "--lca-layer 'nosuch': not a layer of mlp; valid: hidden.0, fc")
    refused(capsys, tmp_path / "out", ["lottery", *FAST, "--lca", "true", "--lca-layer", "nosuch"],
            "--lca-layer 'nosuch': not a layer of mlp; valid: hidden.0, fc")


def test_the_memory_estimate_is_checked_against_the_memory_available(capsys, tmp_path, monkeypatch):
    from ticketlab.run import plan

    monkeypatch.setattr(plan, "_available_memory_bytes", lambda: 1 << 16)   # 64 KiB: even the small model does not fit
    refused(capsys, tmp_path / "out", ["lottery", *FAST], "more than the 0.0 GiB of memory available")


# ------------------------------------------------------------------------------------------ config files
def config_cases(tmp_path: Path, experiment: str) -> dict:
    """name -> (config path, expected message)."""
    other = "lca" if experiment != "lca" else "lottery"
    texts = {
        "lr as text": ('[train]\nlr = "0.01"\n', "lr: expected a number, got '0.01' (TOML has types"),
        "seeds as text": ('seeds = "0"\n', "seeds: expected a list (a TOML array"),
        "seeds as a number": ("seeds = 0\n", "seeds: expected a list"),
        "seed too big": (f"seeds = [{2**40}]\n", f"seeds: must be <= {2**32 - 1}"),
        "bool as text": ('augment = "true"\n', "augment: expected true or false, got 'true'"),
        "steps too long": (f"steps = {10**12}\n", "is too long"),
        "flat and in its table": ("lr = 0.01\n[train]\nlr = 0.02\n", "lr is given twice, at the top and under [train]"),
        "wrong table": ("[model]\nlr = 0.01\n", "lr is not a [model] setting; put it under [train]"),
        "unknown table": ("[trian]\nlr = 0.01\n", "unknown table [trian]"),
        "another experiment": (f'experiment = "{other}"\n', f"experiment = '{other}', but this command runs '{experiment}'"),
        "experiment not text": ("experiment = 3\n", "experiment = 3, but this command runs"),
        "deep nesting": ("a = " + "[" * 50_000 + "\n", "not valid TOML (nested too deeply)"),
    }
    if experiment in WITH_LEVELS:
        texts["levels as text"] = ('levels = "2"\n', "levels: expected an integer, got '2'")
    if experiment in WITH_PRUNING:
        texts["rates a number"] = ("layer_prune_fractions = 5\n", "layer_prune_fractions: expected a table of LAYER = FRACTION")
        texts["rates a list"] = ("layer_prune_fractions = [1, 2]\n", "layer_prune_fractions: expected a table")
        texts["rate as text"] = ('[prune]\nlayer_prune_fractions = { "fc.weight" = "0.1" }\n', "expected a number, got '0.1'")
    cases = {}
    for name, (text, message) in texts.items():
        path = tmp_path / (name.replace(" ", "_") + ".toml")
        path.write_text(text)
        cases[name] = (str(path), message)
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * 200_000)   # 2 MB of valid TOML
    binary = tmp_path / "latin1.toml"
    binary.write_bytes('model = "caf\u00e9"\n'.encode("latin-1"))
    cases.update({
        "a directory": (str(folder), "is a directory"),
        "empty name": ("", "config file: the file name is empty"),
        "too large": (str(big), "is larger than 1 MiB"),
        "not UTF-8": (str(binary), "not valid TOML (not UTF-8 text"),
    })
    if Path("/dev/zero").exists():
        cases["/dev/zero"] = ("/dev/zero", "is larger than 1 MiB")
    return cases


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_bad_config_files_are_refused_with_one_line(capsys, tmp_path, experiment):
    (tmp_path / "configs").mkdir()
    cases = config_cases(tmp_path / "configs", experiment)
    assert len(cases) >= 15
    for name, (path, message) in cases.items():
        refused(capsys, tmp_path / "out", [experiment, *FAST, "--config", path], message)


def test_a_config_naming_its_own_experiment_with_typed_values_is_accepted(tmp_path):
    """The strict reader still takes what TOML can say: numbers, booleans, arrays, tables, steps as text or
    iteration counts, and `experiment` naming the command's own experiment."""
    from ticketlab.specs.lottery import LotterySpec

    path = tmp_path / "ok.toml"
    path.write_text('experiment = "lottery"\nlevels = 3\nseeds = [0, 4294967295]\n[train]\nlr = 1\nsteps = 300\n'
                    'warmup = "10it"\nnesterov = false\n[prune]\nlayer_prune_fractions = { "fc.weight" = 0.5 }\n'
                    '[model]\nwidths = "none"\n[lca]\nlca = true\n')
    spec = specs.from_toml(LotterySpec, path)
    assert (spec.lottery.levels, spec.lottery.seeds, spec.train.lr, spec.train.steps) == (3, (0, 2**32 - 1), 1.0, "300it")
    assert spec.prune.layer_prune_fractions == (("fc.weight", 0.5),) and spec.model.widths is None and spec.lca.lca is True


# ------------------------------------------------------------------------------------------------ sweeps
SWEEP_BASE = ('experiment = "lottery"\n[base]\ndataset = "synthetic"\nmodel = "mlp"\nwidths = [16]\nsteps = "30it"\n'
              'eval_every = "10it"\ncontrols = []\n')
SWEEPS = {
    "base value as text": (SWEEP_BASE + 'levels = "2"\n[grid]\nlr = [0.1]\n', "[base]: levels: expected an integer, got '2'"),
    "axis value as text": (SWEEP_BASE + '[grid]\nlr = ["0.1"]\n', "lr: expected a number, got '0.1'"),
    "axis rates a number": (SWEEP_BASE + "[grid]\nlayer_prune_fractions = [5]\n", "expected a table of LAYER = FRACTION"),
    "base twice": (SWEEP_BASE + "lr = 0.1\n[base.train]\nlr = 0.2\n[grid]\nlevels = [1]\n", "lr is given twice"),
    "base wrong table": (SWEEP_BASE + "[base.data]\nlr = 0.1\n[grid]\nlevels = [1]\n", "lr is not a [data] setting; put it under [train]"),
    "too many levels at a point": (SWEEP_BASE + "[grid]\nlevels = [1, 200]\n", "point levels=200: --levels 200: hidden.0.weight"),
    "batch larger than the set at a point": (SWEEP_BASE + "[grid]\nbatch_size = [100, 601]\n", "point batch_size=601: --batch-size 601"),
    "deep nesting": ('experiment = "lottery"\n[grid]\nlr = ' + "[" * 50_000 + "\n", "not valid TOML (nested too deeply)"),
    "too large": (SWEEP_BASE + "# padding\n" * 200_000, "is larger than 1 MiB"),
}


@pytest.mark.parametrize("case", sorted(SWEEPS))
def test_bad_sweep_files_are_refused_with_one_line(capsys, tmp_path, case):
    text, message = SWEEPS[case]
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    refused(capsys, tmp_path / "out", ["sweep", str(path), "--no-progress"], message)


@pytest.mark.parametrize("args,message", [
    (["--seeds", TOO_BIG], "--seeds: must be <= "),
    (["--threads", "9" * 20], "--threads: must be <= "),
    (["--steps", f"{TOO_BIG}it"], "is too long"),
    (["--batch-size", "99999999"], "larger than the training set"),
    (["--optimizer", "adam", "--nesterov", "true"], "--nesterov true applies to --optimizer sgd only"),
    (["--eval-every", "0it"], "--eval-every 0it: must be at least one iteration"),
])
def test_bad_flags_after_a_sweep_file_are_refused(capsys, tmp_path, args, message):
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP_BASE + "[grid]\nlevels = [1]\n")
    refused(capsys, tmp_path / "out", ["sweep", str(path), *args], message)


@pytest.mark.parametrize("file", ["", "folder", "/dev/zero"])
def test_unreadable_sweep_files_are_refused(capsys, tmp_path, file):
    if file == "folder":
        file = str(tmp_path)
    if file == "/dev/zero" and not Path(file).exists():
        pytest.skip("no /dev/zero here")
    refused(capsys, tmp_path / "out", ["sweep", file], "sweep file")


# ---------------------------------------------------------------------------------- help agrees with code
def test_checkpoint_and_eval_help_say_what_the_code_does(monkeypatch):
    """`--checkpoint-every 0it` checkpoints at evaluations once CHECKPOINT_SECONDS have passed (not at every
    evaluation); `--eval-every` must be at least 1it."""
    from ticketlab.specs.lottery import LotterySpec
    from ticketlab.train import checkpoint

    helps = {s.name: s.help for s in specs.settings_of(LotterySpec)}
    assert f"every {checkpoint.CHECKPOINT_SECONDS:g} s" in helps["checkpoint_every"]
    assert "at every evaluation" not in helps["checkpoint_every"]
    assert "at least 1it" in helps["eval_every"]
    clock = [100.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: clock[0])
    ck = checkpoint.Checkpoints(unit=object(), every=0)
    assert not ck.due(10, at_eval=True)                        # an evaluation before the interval: no checkpoint
    clock[0] += checkpoint.CHECKPOINT_SECONDS
    assert not ck.due(11, at_eval=False) and ck.due(12, at_eval=True)   # only at an evaluation, once it has passed


# ------------------------------------------------------------------------------------- no torch for flags
TORCH_FREE = textwrap.dedent("""
    import contextlib, io, json, sys
    import ticketlab.cli as cli
    codes = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            codes.append([cli.main(argv), err.getvalue()])
    print(json.dumps({"codes": codes, "torch": [m for m in sys.modules if m == "torch" or m.startswith("torch.")]}))
""")


def test_flag_and_config_errors_do_not_import_torch(python, cli_env, tmp_path):
    cfg = tmp_path / "typed.toml"
    cfg.write_text('levels = "2"\n')
    out = str(tmp_path / "out")
    cases = [["lottery", "--seeds", TOO_BIG, "--out", out], ["stability", "--ticket-levels", "999999", "--out", out],
             ["lottery", "--steps", f"{TOO_BIG}it", "--out", out], ["lottery", "--eval-every", "0it", "--out", out],
             ["lottery", "--nesterov", "true", "--out", out], ["lottery", "--config", str(cfg), "--out", out],
             ["lottery", "--config", "", "--out", out], ["sweep", str(tmp_path)],
             *([e, "--seeds", TOO_BIG, "--out", out] for e in ("prune-at-init", "sparse-train", "lr-range"))]
    r = subprocess.run([python, "-c", TORCH_FREE, json.dumps(cases)], env=cli_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    for argv, (code, err) in zip(cases, result["codes"]):
        assert code == 2 and err.startswith("ticketlab: error: ") and err.count("\n") == 1, (argv, code, err)
    assert result["torch"] == [], "torch was imported for a flag or config error"
    assert not Path(out).exists()
