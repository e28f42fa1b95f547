"""The `ticketlab` command: bad input in-process through `cli.main(argv)`, plus a few runs of the real entry
point in a subprocess, and checks that parsing, help, errors and `show` never import torch."""

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from ticketlab import cli
from ticketlab.names import DATASETS as DATASET_NAMES
from ticketlab import spec as specs

FAST = ["--dataset", "synthetic", "--model", "mlp", "--widths", "16", "--steps", "20it", "--batch-size", "100",
        "--eval-every", "10it", "--levels", "2", "--no-progress"]


def entry_point(python) -> list[str]:
    """The installed `ticketlab` script next to the interpreter, else `python -m ticketlab`."""
    script = Path(python).with_name("ticketlab")
    return [str(script)] if script.is_file() else [python, "-m", "ticketlab"]


def cli_run(python, env, *args, cwd=None):
    return subprocess.run([*entry_point(python), *args], env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


def run_main(capsys, *argv):
    """`ticketlab ARGV` in this process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, out, err, message):
    assert code == 2, (code, err)
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("ticketlab: error: ") and "Traceback" not in err
    assert message in err, err


# ------------------------------------------------------------------------------------- the entry point
def test_help_lists_commands_and_documents_every_setting(python, cli_env):
    from ticketlab.specs.lottery import LotterySpec

    top = cli_run(python, cli_env, "--help")
    assert top.returncode == 0
    for name in cli.COMMANDS:
        assert name in top.stdout
    sub = cli_run(python, cli_env, "lottery", "--help")
    assert sub.returncode == 0
    for s in specs.settings_of(LotterySpec):
        assert s.flag in sub.stdout, s.flag
    for flag in ("--config", "--out", "--force", "--no-progress"):
        assert flag in sub.stdout
    assert cli_run(python, cli_env, "show", "--help").returncode == 0
    version = cli_run(python, cli_env, "--version")
    assert version.returncode == 0 and version.stdout.startswith("ticketlab ")


def test_entry_point_bad_input_is_one_line_exit_2(python, cli_env, tmp_path):
    r = cli_run(python, cli_env, "lottery", "--levels", "-3", "--out", str(tmp_path / "runs"))
    one_line_error(r.returncode, r.stdout, r.stderr, "--levels: must be >= 0, got -3")
    r = cli_run(python, cli_env, "frobnicate")
    one_line_error(r.returncode, r.stdout, r.stderr, "invalid choice")
    assert not (tmp_path / "runs").exists()


@pytest.mark.heavy
def test_lottery_then_show_in_every_format(python, cli_env, tmp_path):
    r = cli_run(python, cli_env, "lottery", *FAST, "--seeds", "0,1", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("run folder: ") and lines[1].startswith("parallel: ")
    assert lines[2].split()[:3] == ["level", "remaining", "ticket"]
    assert [l.split()[0] for l in lines[3:6]] == ["0", "1", "2"]
    run_dir = next(tmp_path.iterdir())
    assert {"spec.json", "results.csv", "results.json", "summary.json", "accuracy.png"} <= {p.name for p in run_dir.iterdir()}
    csv = cli_run(python, cli_env, "show", str(run_dir), "--format", "csv")
    assert csv.returncode == 0
    header, *rows = csv.stdout.strip().splitlines()
    assert header.startswith("level,weights_remaining,arm,seed,test_accuracy") and len(rows) == 2 * (1 + 3 + 3)
    js = json.loads(cli_run(python, cli_env, "show", str(run_dir), "--format", "json").stdout)
    assert {r["arm"] for r in js} == {"ticket", "random_reinit", "random_prune"}
    table = cli_run(python, cli_env, "show", str(run_dir))
    assert table.returncode == 0 and table.stdout.splitlines()[1:] == lines[3:6]
    # rerun: resumes, nothing to train, same table
    again = cli_run(python, cli_env, "lottery", *FAST, "--seeds", "0,1", "--out", str(tmp_path))
    assert again.stdout == r.stdout


# ------------------------------------------------------------------------------------------- no torch
TORCH_FREE = textwrap.dedent("""
    import contextlib, io, json, sys
    import ticketlab.cli as cli
    codes = []
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as e:
                code = e.code
        codes.append([code, out.getvalue(), err.getvalue()])
    cli.build_parser()  # every subcommand's flags
    print(json.dumps({"codes": codes, "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}))
""")


def fake_run_folder(tmp_path, experiment: str, rows: list[dict]) -> Path:
    from ticketlab import store

    spec = specs.build(cli.EXPERIMENTS[experiment].spec_class(), {})
    run = store.Run.open(tmp_path / "runs", spec)
    run.write("results.csv", rows)
    return run.path


def unfinished_run_folder(root: Path, experiment: str, done: dict[str, dict], half_written: dict[str, dict]) -> Path:
    """A run folder as a killed run leaves it: no results.csv; finished units (files and manifest) and
    half-written ones (result.json and weights on disk, no manifest yet)."""
    from ticketlab import store

    spec = specs.build(cli.EXPERIMENTS[experiment].spec_class(), {})
    run = store.Run.open(root, spec)
    for rel, row in done.items():
        run.unit(*rel.split("/")).commit({"result.json": row, "weights.bin": b"weights"})
    for rel, row in half_written.items():
        folder = run.path / rel
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(row))
        (folder / "weights.bin").write_bytes(b"weig")
    return run.path


def test_help_parsing_errors_and_show_do_not_import_torch(python, cli_env, tmp_path):
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("levels = = 3\n")
    unknown_key = tmp_path / "unknown.toml"
    unknown_key.write_text("[train]\nlearning_rate = 3\n")
    lottery_rows = [{"level": lv, "weights_remaining": 0.8 ** lv, "arm": arm, "seed": s, "test_accuracy": 0.5 + lv / 10}
                    for lv in (0, 1) for arm in (("ticket",) if lv == 0 else ("ticket", "random_prune")) for s in (0, 1)]
    lottery_dir = fake_run_folder(tmp_path, "lottery", lottery_rows)
    lca_dir = fake_run_folder(tmp_path, "lca", [{"seed": 0, "layer": "fc1", "lca": -0.25}])
    unfinished_dir = unfinished_run_folder(tmp_path / "unfinished", "lottery", LOTTERY_DONE, LOTTERY_HALF)
    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text('experiment = "lottery"\n[grid]\nwidth = [1, 2]\n')
    out = str(tmp_path / "runs-bad")
    cases = [
        (["--help"], 0, "show"),
        (["--version"], 0, "ticketlab "),
        ([], 2, "COMMAND"),
        (["lottery", "--help"], 0, "--prune-fraction"),
        (["deconstruct", "--help"], 0, "--mask-one"),
        (["supermask", "--help"], 0, "--kept"),
        (["show", "--help"], 0, "RUN_DIR"),
        (["lottery", "--levels", "-3", "--out", out], 2, "--levels: must be >= 0, got -3"),
        (["lottery", "--model", "foo", "--out", out], 2, "unknown model 'foo'"),
        (["deconstruct", "--mask-one", "nope", "--out", out], 2, "unknown mask-1 action 'nope'"),
        (["deconstruct", "--criterion", "nope", "--out", out], 2, "unknown criterion 'nope'"),
        (["supermask", "--method", "nope", "--out", out], 2, "unknown supermask method 'nope'"),
        (["lca", "--lca-points", "3", "--out", out], 2, "--lca-points 3: must be a power of two"),
        (["lottery", "--config", str(bad_toml), "--out", out], 2, "not valid TOML"),
        (["lottery", "--config", str(unknown_key), "--out", out], 2, "unknown setting 'learning_rate'"),
        (["lottery", "--config", str(tmp_path / "missing.toml"), "--out", out], 2, "does not exist"),
        (["lottery", "--no-such-flag"], 2, "unrecognized arguments"),
        (["frobnicate"], 2, "invalid choice"),
        (["show", str(tmp_path)], 2, "not a ticketlab run folder"),
        (["show", str(lottery_dir)], 0, "random_prune"),
        (["show", str(lottery_dir), "--format", "csv"], 0, "level,weights_remaining,arm,seed,test_accuracy"),
        (["show", str(lottery_dir), "--format", "json"], 0, '"arm": "ticket"'),
        (["show", str(lca_dir)], 0, "layer"),
        (["show", str(unfinished_dir)], 0, "(unfinished run: finished units only)"),
        (["show", str(unfinished_dir), "--format", "csv"], 0, "seed-0/level-01/ticket"),
        (["sweep", "--help"], 0, "[grid]"),
        (["sweep", str(tmp_path / "missing.toml")], 2, "does not exist"),
        (["sweep", str(bad_toml)], 2, "not valid TOML"),
        (["sweep", str(sweep_file), "--out", out], 2, "'width' is not a setting"),
    ]
    r = subprocess.run([python, "-c", TORCH_FREE, json.dumps([argv for argv, _, _ in cases])], env=cli_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    for (argv, code, text), (got, stdout, stderr) in zip(cases, result["codes"]):
        assert got == code, (argv, got, stderr)
        assert text in stdout + stderr, (argv, stdout, stderr)
        if code == 2 and argv:
            assert len(stderr.strip().splitlines()) == 1 and stdout == "", (argv, stderr)
    assert result["torch"] == [], "torch was imported"
    assert not Path(out).exists()


def test_show_table_matches_the_experiment_table(capsys, tmp_path):
    from ticketlab.report.tables import lottery

    rows = [{"level": lv, "weights_remaining": 0.8 ** lv, "arm": "ticket", "seed": s, "test_accuracy": 0.5 + s / 10}
            for lv in (0, 1, 2) for s in (0, 1)]
    run_dir = fake_run_folder(tmp_path, "lottery", rows)
    code, out, err = run_main(capsys, "show", str(run_dir))
    assert code == 0 and err == ""
    assert out.splitlines() == lottery(rows)
    assert out.splitlines()[1].split()[:3] == ["0", "100.00%", "55.00"]


# --------------------------------------------------------------------------------------- unfinished runs
def lottery_row(level, seed, accuracy, arm="ticket"):
    return {"level": level, "weights_remaining": 0.8 ** level, "arm": arm, "seed": seed, "test_accuracy": accuracy,
            "test_loss": 1.0}


LOTTERY_DONE = {"seed-0/level-00/ticket": lottery_row(0, 0, 0.61), "seed-0/level-01/ticket": lottery_row(1, 0, 0.43),
                "seed-0/level-01/random_prune": lottery_row(1, 0, 0.37, "random_prune")}
LOTTERY_HALF = {"seed-0/level-02/ticket": lottery_row(2, 0, 0.99)}


def damage_results_csv(run_dir: Path, how: str) -> None:
    from ticketlab import store

    rows = [lottery_row(0, 0, 0.11)]   # what a complete report would say: never shown once damaged
    if how == "missing":
        return
    if how == "truncated":
        store.Unit(run_dir).write("results.csv", rows)
        data = (run_dir / "results.csv").read_bytes()
        (run_dir / "results.csv").write_bytes(data[: len(data) // 2])
    elif how == "unlisted":   # on disk, but the run's manifest does not list it (written by a hand or a kill)
        (run_dir / "results.csv").write_text(store.rows_to_csv(rows))
    elif how == "run manifest corrupt":
        store.Unit(run_dir).write("results.csv", rows)
        (run_dir / "MANIFEST.json").write_text('{"format": 1, "compl')


@pytest.mark.parametrize("how", ["missing", "truncated", "unlisted", "run manifest corrupt"])
def test_show_an_unfinished_run_shows_finished_units_only_and_says_so(capsys, tmp_path, how):
    run_dir = unfinished_run_folder(tmp_path, "lottery", LOTTERY_DONE, LOTTERY_HALF)
    # a finished unit whose result file was cut short afterwards is not finished any more
    seed1 = next(iter(unfinished_run_folder(tmp_path / "other", "lottery", {"seed-1/level-00/ticket": lottery_row(0, 1, 0.77)}, {}).glob("seed-1")))
    seed1.rename(run_dir / "seed-1")
    (run_dir / "seed-1" / "level-00" / "ticket" / "result.json").write_text('{"level": 0, "test_acc')
    damage_results_csv(run_dir, how)

    code, out, err = run_main(capsys, "show", str(run_dir))
    assert code == 0 and err == "", err
    lines = out.splitlines()
    assert lines[-1] == "(unfinished run: finished units only)"
    assert "99" not in out and "77" not in out and "11" not in out, "level 2 (no manifest), seed 1, the damaged report"
    if how == "run manifest corrupt":   # spec.json cannot be trusted either: which table is unknown, plain columns
        assert lines[0].split()[0] == "unit" and {line.split()[0] for line in lines[1:-1]} == set(LOTTERY_DONE)
    else:
        table = {line.split()[0]: line.split()[2:] for line in lines[1:-1]}
        assert table == {"0": ["61.00%", "-"], "1": ["43.00%", "37.00%"]}, out

    code, out, err = run_main(capsys, "show", str(run_dir), "--format", "csv")
    assert code == 0 and "unfinished run: finished units only" in err and "Traceback" not in err
    header, *rows = out.splitlines()
    assert header.split(",")[0] == "unit"
    assert sorted(r.split(",")[0] for r in rows) == sorted(LOTTERY_DONE)
    code, out, err = run_main(capsys, "show", str(run_dir), "--format", "json")
    assert code == 0 and "unfinished run" in err
    assert {r["unit"]: r["test_accuracy"] for r in json.loads(out)} == {k: v["test_accuracy"] for k, v in LOTTERY_DONE.items()}


def test_show_a_run_without_any_finished_unit_is_a_one_line_error(capsys, tmp_path):
    run_dir = unfinished_run_folder(tmp_path, "lottery", {}, LOTTERY_HALF)
    damage_results_csv(run_dir, "truncated")
    one_line_error(*run_main(capsys, "show", str(run_dir)), "no finished results yet")


def test_show_unfinished_runs_whose_units_lack_the_report_columns(capsys, tmp_path):
    """A deconstruct unit's row does not say its criterion (its folder does) and a stability path's row holds
    the whole path: the table falls back to plain columns named by unit, never a traceback."""
    deconstruct = unfinished_run_folder(tmp_path, "deconstruct", {
        "seed-0/level-00/dense": lottery_row(0, 0, 0.61),
        "large_final/rewind/seed-0/level-01/ticket": lottery_row(1, 0, 0.43),
        "large_final/rewind/seed-0/level-01/untrained-rewind": {"level": 1, "test_accuracy": 0.12, "weights_remaining": 0.8}},
        {"random/rewind/seed-0/level-01/ticket": lottery_row(1, 0, 0.99)})
    code, out, err = run_main(capsys, "show", str(deconstruct))
    assert code == 0 and err == "", err
    lines = out.splitlines()
    assert lines[0].split()[0] == "unit" and lines[-1] == "(unfinished run: finished units only)"
    shown = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert set(shown) == {"seed-0/level-00/dense", "large_final/rewind/seed-0/level-01/ticket",
                          "large_final/rewind/seed-0/level-01/untrained-rewind"}
    assert "0.43" in shown["large_final/rewind/seed-0/level-01/ticket"] and "0.99" not in out

    stability = unfinished_run_folder(tmp_path, "stability", {
        "seed-0/level-00/k-0/copy-0": {"test_accuracy": 0.5, "train_steps": 6},
        "seed-0/level-00/k-0": {"seed": 0, "level": 0, "copy_step": 0, "error_barrier": 0.25,
                                "path": [{"alpha": 0.0, "test_error": 0.5}, {"alpha": 1.0, "test_error": 0.5}]}}, {})
    code, out, err = run_main(capsys, "show", str(stability))
    assert code == 0 and err == "", err
    header = out.splitlines()[0].split()
    assert "error_barrier" in header and "path" not in header and "alpha" not in out
    code, out, err = run_main(capsys, "show", str(stability), "--format", "json")
    assert code == 0 and {r["unit"]: r.get("error_barrier") for r in json.loads(out)} == \
        {"seed-0/level-00/k-0": 0.25, "seed-0/level-00/k-0/copy-0": None}


def test_experiment_modules_reexport_the_torch_free_specs_and_tables():
    import importlib

    from ticketlab.report.tables import TABLES

    for name, e in cli.EXPERIMENTS.items():
        module = e.run_module()
        cls = e.spec_class()
        assert cls.experiment == name
        assert getattr(module, cls.__name__) is cls, name
        assert cls.__module__ == f"ticketlab.specs.{name.replace('-', '_')}"
        if name in TABLES:
            assert module.table is TABLES[name]
        else:
            assert not hasattr(module, "table"), f"{name} has a table: add it to report.tables.TABLES for `show`"
        importlib.import_module(f"ticketlab.specs.{name.replace('-', '_')}")


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args,message", [
    (["--model", "resnet999"], "unknown model 'resnet999'; valid: "),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'; valid: " + ", ".join(sorted(DATASET_NAMES))),
    (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'; valid: adam, fop-adam, fop-sgd, sgd"),
    (["--levels", "-1"], "--levels: must be >= 0"),
    (["--prune-fraction", "1.2"], "--prune-fraction: must be in (0, 1)"),
    (["--prune-fraction", "0"], "--prune-fraction: must be in (0, 1)"),
    (["--batch-size", "0"], "--batch-size: must be >= 1"),
    (["--rewind", "500it"], "is not before the end of training"),
    (["--steps", "many"], "--steps: bad step 'many'"),
    (["--retrain", "rewind", "--retrain-steps", "5it"], "--retrain-steps applies to"),
    (["--criterion", "largest"], "unknown criterion 'largest'"),
    (["--layer-prune-fractions", "nope.weight=0.3"], "unknown layer 'nope.weight'"),
    (["--device", "tpu"], "--device"),
    (["--no-such-flag"], "unrecognized arguments"),
])
def test_bad_input_gives_one_line_exit_2_and_no_run_folder(capsys, tmp_path, args, message):
    out = tmp_path / "runs"
    one_line_error(*run_main(capsys, "lottery", *FAST, *args, "--out", str(out)), message)
    assert not out.exists(), "nothing may be written for bad input"


def test_missing_data_files_and_bad_config_are_one_line(capsys, tmp_path):
    runs = tmp_path / "runs"
    one_line_error(*run_main(capsys, "lottery", "--dataset", "mnist", "--data-dir", str(tmp_path / "nodata"), "--out", str(runs)),
                   "train-images-idx3-ubyte")
    assert not runs.exists()
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[train]\nlearning_rate = 3\n")
    one_line_error(*run_main(capsys, "lottery", "--config", str(cfg), "--out", str(runs)), "unknown setting 'learning_rate'")
    cfg.write_text("levels = = 3\n")
    one_line_error(*run_main(capsys, "lottery", "--config", str(cfg), "--out", str(runs)), "not valid TOML")
    one_line_error(*run_main(capsys, "show", str(tmp_path)), "not a ticketlab run folder")
    one_line_error(*run_main(capsys, "frobnicate"), "invalid choice")
    one_line_error(*run_main(capsys, "lottery", "--levels"), "expected one argument")
    assert not runs.exists()


def test_no_command_prints_help_and_exits_2(capsys):
    code, out, err = run_main(capsys)
    assert code == 2 and "COMMAND" in out and "lottery" in out


def test_config_file_and_flags(capsys, tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('[data]\ndataset = "synthetic"\n[model]\nmodel = "mlp"\nwidths = [16]\n'
                   '[train]\nsteps = "20it"\neval_every = "10it"\n[lottery]\nlevels = 2\ncontrols = []\n')
    code, out, err = run_main(capsys, "lottery", "--config", str(cfg), "--levels", "1", "--no-progress", "--out", str(tmp_path / "runs"))
    assert code == 0, err
    spec = json.loads(next((tmp_path / "runs").iterdir()).joinpath("spec.json").read_text())
    assert spec["non_default"]["levels"] == 1 and spec["non_default"]["controls"] == []  # the flag beats the file


def test_every_command_parses_with_all_flags_built():
    parser = cli.build_parser()
    args = parser.parse_args(["lottery", "--levels", "3", "--out", "x"])
    assert (args.command, args.levels, args.out, args.force) == ("lottery", "3", "x", False)
    args = parser.parse_args(["show", "somewhere", "--format", "csv"])
    assert (args.command, args.run_dir, args.format) == ("show", "somewhere", "csv")
    assert cli._command_in(["--version"]) is None and cli._command_in(["lca", "--help"]) == "lca"
