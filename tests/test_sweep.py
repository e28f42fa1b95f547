"""`ticketlab sweep`: points are ordinary run folders in one task graph; bad files fail before anything
runs; a killed sweep resumes with only what is missing; a Ray worker killed mid-unit changes nothing."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ticketlab import cli

SWEEP = """
experiment = "lottery"
[base]
dataset = "synthetic"
model = "mlp"
widths = [16]
batch_size = 50
eval_every = "20it"
steps = "{steps}"
checkpoint_every = "{checkpoint}"
levels = 1
controls = []
[grid]
prune_fraction = [0.2, 0.5]
[zip]
lr = [0.01, 0.02]
random_labels = [0.0, 0.1]
"""


def write(tmp_path, text, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def rows(folder):
    with open(folder / "results.csv") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def sweep_folder(out):
    (folder,) = Path(out).glob("sweep-lottery-*")
    return folder


@pytest.mark.heavy
def test_sweep_runs_every_point_and_tabulates_them_with_axis_columns(tmp_path, capsys):
    file = write(tmp_path, SWEEP.format(steps="40it", checkpoint="0it"))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(file), "--seeds", "0,1", "--out", str(out), "--no-progress"]) == 0
    folder = sweep_folder(out)
    table = rows(folder)
    points = {(r["prune_fraction"], r["lr"], r["random_labels"]) for r in table}
    assert points == {(p, lr, rl) for p in ("0.2", "0.5") for lr, rl in (("0.01", "0.0"), ("0.02", "0.1"))}
    assert len(table) == 4 * 2 * 2          # points x levels x seeds
    assert len(list(out.glob("lottery-*"))) == 4
    assert (folder / "test_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # the same rows a single run of one point gives
    one = [r for r in table if (r["prune_fraction"], r["lr"]) == ("0.5", "0.02")]
    single = tmp_path / "single"
    assert cli.main(["lottery", "--dataset", "synthetic", "--model", "mlp", "--widths", "16", "--batch-size", "50",
                     "--eval-every", "20it", "--steps", "40it", "--levels", "1", "--controls", "none", "--prune-fraction", "0.5",
                     "--lr", "0.02", "--random-labels", "0.1", "--seeds", "0,1", "--out", str(single), "--no-progress"]) == 0
    (run,) = single.glob("lottery-*")
    assert [{k: v for k, v in r.items() if k not in ("prune_fraction", "lr", "random_labels")} for r in one] == rows(run)
    assert (out / run.name).is_dir(), "a sweep point and the same single run share their folder"
    capsys.readouterr()
    assert cli.main(["show", str(folder)]) == 0
    assert "prune_fraction" in capsys.readouterr().out


@pytest.mark.heavy
def test_adding_an_axis_value_reuses_the_finished_points(tmp_path):
    out = tmp_path / "out"
    small = SWEEP.format(steps="40it", checkpoint="0it").replace("prune_fraction = [0.2, 0.5]", "prune_fraction = [0.2]")
    assert cli.main(["sweep", str(write(tmp_path, small)), "--out", str(out), "--no-progress"]) == 0
    before = {p: p.stat().st_mtime_ns for p in out.glob("lottery-*/**/result.json")}
    assert cli.main(["sweep", str(write(tmp_path, SWEEP.format(steps="40it", checkpoint="0it"), "more.toml")),
                     "--out", str(out), "--no-progress"]) == 0
    assert len(list(out.glob("lottery-*"))) == 4
    assert before and all(p.stat().st_mtime_ns == t for p, t in before.items()), "finished units were recomputed"


BAD = {
    "unknown experiment": ('experiment = "nope"', "is not an experiment; valid: deconstruct"),
    "unknown axis": ('experiment = "lottery"\n[grid]\nwidth_of_it = [1, 2]', "'width_of_it' is not a setting"),
    "empty axis": ('experiment = "lottery"\n[grid]\nlr = []', "lr is empty"),
    "non-list axis": ('experiment = "lottery"\n[grid]\nlr = 0.1', "lr must be a list"),
    "invalid value": ('experiment = "lottery"\n[grid]\nprune_fraction = [0.2, 1.5]', "prune_fraction=1.5"),
    "unequal zip": ('experiment = "lottery"\n[zip]\nlr = [0.1, 0.2]\nbatch_size = [10]', "equal lengths"),
    "unknown section": ('experiment = "lottery"\n[grids]\nlr = [0.1]', "unknown key(s) grids"),
    "seeds axis": ('experiment = "lottery"\n[grid]\nseeds = [[0], [1]]', "seeds cannot be an axis"),
    "axis also a flag": ('experiment = "lottery"\n[grid]\nlr = [0.1]', "lr is an axis"),
    "not TOML": ('experiment = "lottery"\n[grid\n', "not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_sweep_files_get_one_line_and_exit_2_before_anything_runs(tmp_path, capsys, case):
    text, message = BAD[case]
    out = tmp_path / "out"
    extra = ["--lr", "0.5"] if case == "axis also a flag" else []
    assert cli.main(["sweep", str(write(tmp_path, text)), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ticketlab: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists(), "nothing may be written for a bad sweep file"


def test_unknown_flag_after_the_sweep_file_lists_the_valid_ones(tmp_path, capsys):
    file = write(tmp_path, SWEEP.format(steps="40it", checkpoint="0it"))
    assert cli.main(["sweep", str(file), "--levelz", "3"]) == 2
    err = capsys.readouterr().err
    assert "unknown option '--levelz'" in err and "--levels" in err


def _run_sweep(file, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "ticketlab.cli", "sweep", str(file), "--out", str(out), "--no-progress", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


@pytest.mark.heavy
def test_a_killed_sweep_resumes_with_only_what_is_missing(tmp_path):
    file = write(tmp_path, SWEEP.format(steps="400it", checkpoint="50it"))
    reference = tmp_path / "reference"
    assert cli.main(["sweep", str(file), "--out", str(reference), "--workers", "1", "--no-progress"]) == 0
    out = tmp_path / "out"
    proc = _run_sweep(file, out, "--workers", "1")
    deadline = time.monotonic() + 120
    while len(list(out.glob("lottery-*/**/result.json"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("lottery-*/**/result.json")}
    assert 3 <= len(finished) < 8, "the kill should land mid-sweep"
    assert cli.main(["sweep", str(file), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items()), "finished units were recomputed"
    assert rows(sweep_folder(out)) == rows(sweep_folder(reference))


def _ray_task_pids(root_pid):
    """Descendants of `root_pid` running a Ray task (Ray titles them `ray::<function>`), from /proc."""
    parent, title = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
            title[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            pass
    def descends(pid):
        while pid in parent and pid != root_pid:
            pid = parent[pid]
        return pid == root_pid
    return [pid for pid, text in title.items() if "ray::_ray_task" in text and descends(pid)]


@pytest.mark.heavy
def test_a_ray_worker_killed_mid_unit_is_retried_and_changes_nothing(tmp_path):
    file = write(tmp_path, SWEEP.format(steps="1500it", checkpoint="100it"))
    reference = tmp_path / "reference"
    assert cli.main(["sweep", str(file), "--out", str(reference), "--workers", "1", "--no-progress"]) == 0
    out = tmp_path / "out"
    proc = _run_sweep(file, out, "--executor", "ray", "--workers", "2")
    killed = None
    deadline = time.monotonic() + 180
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        # a unit in progress: a checkpoint written, the unit not yet committed
        if any(out.glob("lottery-*/seed-*/level-*/*/checkpoint/MANIFEST.json")):
            pids = _ray_task_pids(proc.pid)
            if pids:
                killed = pids[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    assert killed is not None, "no Ray task was caught mid-unit"
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert rows(sweep_folder(out)) == rows(sweep_folder(reference))


@pytest.mark.parametrize("name", sorted(cli.EXPERIMENTS))
def test_every_experiment_can_be_swept(name):
    """A sweep file's `experiment` is a command name (prune-at-init, lr-range, sparse-train hyphenated): each
    resolves to the experiment class its command runs."""
    from ticketlab.run.sweep import experiment_class

    assert experiment_class(name) is cli.EXPERIMENTS[name].run_module().EXPERIMENT
