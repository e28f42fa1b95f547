"""The `ticketlab` command as a user runs it: in a subprocess, checking exit codes and what it prints."""

import json
import subprocess
import sys

import pytest

FAST = ["--dataset", "synthetic", "--model", "mlp", "--widths", "16", "--steps", "20it", "--batch-size", "100",
        "--eval-every", "10it", "--levels", "2", "--no-progress"]


def cli(python, env, *args, cwd=None):
    return subprocess.run([python, "-m", "ticketlab", *args], env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


def test_help_documents_every_setting(python, cli_env):
    from ticketlab import spec as specs
    from ticketlab.experiments.lottery import LotterySpec

    top = cli(python, cli_env, "--help")
    assert top.returncode == 0 and "lottery" in top.stdout and "show" in top.stdout
    sub = cli(python, cli_env, "lottery", "--help")
    assert sub.returncode == 0
    for s in specs.settings_of(LotterySpec):
        assert s.flag in sub.stdout, s.flag
    for flag in ("--config", "--out", "--force"):
        assert flag in sub.stdout
    assert cli(python, cli_env, "show", "--help").returncode == 0


def test_lottery_then_show_in_every_format(python, cli_env, tmp_path):
    r = cli(python, cli_env, "lottery", *FAST, "--seeds", "0,1", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("run folder: ") and lines[1].startswith("parallel: ")
    assert lines[2].split()[:3] == ["level", "remaining", "ticket"]
    assert [l.split()[0] for l in lines[3:6]] == ["0", "1", "2"]
    run_dir = next(tmp_path.iterdir())
    assert {"spec.json", "results.csv", "results.json", "summary.json", "accuracy.png"} <= {p.name for p in run_dir.iterdir()}
    csv = cli(python, cli_env, "show", str(run_dir), "--format", "csv")
    assert csv.returncode == 0
    header, *rows = csv.stdout.strip().splitlines()
    assert header.startswith("level,weights_remaining,arm,seed,test_accuracy") and len(rows) == 2 * (1 + 3 + 3)
    js = json.loads(cli(python, cli_env, "show", str(run_dir), "--format", "json").stdout)
    assert {r["arm"] for r in js} == {"ticket", "random_reinit", "random_prune"}
    table = cli(python, cli_env, "show", str(run_dir))
    assert table.returncode == 0 and table.stdout.splitlines()[1:] == lines[3:6]
    # rerun: resumes, nothing to train, same table
    again = cli(python, cli_env, "lottery", *FAST, "--seeds", "0,1", "--out", str(tmp_path))
    assert again.stdout == r.stdout


def test_config_file_and_flags(python, cli_env, tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('[data]\ndataset = "synthetic"\n[model]\nmodel = "mlp"\nwidths = [16]\n'
                   '[train]\nsteps = "20it"\neval_every = "10it"\n[lottery]\nlevels = 1\ncontrols = []\n')
    r = cli(python, cli_env, "lottery", "--config", str(cfg), "--no-progress", "--out", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr
    spec = json.loads(next((tmp_path / "runs").iterdir()).joinpath("spec.json").read_text())
    assert spec["non_default"]["levels"] == 1 and spec["non_default"]["controls"] == []


@pytest.mark.parametrize("args,message", [
    (["--model", "resnet999"], "unknown model 'resnet999'; valid: "),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'; valid: cifar10, fashion_mnist, mnist, mnist1d, synthetic"),
    (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'; valid: adam, sgd"),
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
def test_bad_input_gives_one_line_exit_2_and_no_run_folder(python, cli_env, tmp_path, args, message):
    out = tmp_path / "runs"
    r = cli(python, cli_env, "lottery", *FAST, *args, "--out", str(out))
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and message in r.stderr, r.stderr
    assert not out.exists(), "nothing may be written for bad input"


def test_missing_data_files_and_bad_config_are_one_line(python, cli_env, tmp_path):
    r = cli(python, cli_env, "lottery", "--dataset", "mnist", "--data-dir", str(tmp_path / "nodata"), "--out", str(tmp_path / "runs"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "train-images-idx3-ubyte" in r.stderr
    assert not (tmp_path / "runs").exists()
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[train]\nlearning_rate = 3\n")
    r = cli(python, cli_env, "lottery", "--config", str(cfg), "--out", str(tmp_path / "runs"))
    assert r.returncode == 2 and "unknown setting 'learning_rate'" in r.stderr and "Traceback" not in r.stderr
    r = cli(python, cli_env, "show", str(tmp_path))
    assert r.returncode == 2 and "not a ticketlab run folder" in r.stderr
    r = cli(python, cli_env, "frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr and len(r.stderr.strip().splitlines()) == 1
