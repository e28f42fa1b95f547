"""`--tensorboard DIR`: the event files are read back with TensorBoard's own reader and compared with the
run folder (every unit's metrics.jsonl, results.csv); the run folder does not depend on the option, a second
run writes nothing twice, and a missing TensorBoard is one line before anything runs."""

import csv
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ticketlab import cli
from ticketlab.report.tensorboard import EVENT_FILE
from ticketlab.store import Unit

FLAGS = ["--dataset", "synthetic", "--model", "mlp", "--widths", "16", "--steps", "30it", "--batch-size", "50",
         "--eval-every", "10it", "--levels", "2", "--controls", "random_reinit", "--seeds", "0,1",
         "--no-progress", "--workers", "1"]


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same lottery run without and with --tensorboard (into other --out folders), then once more."""
    tmp = tmp_path_factory.mktemp("tb")
    plain = _main(tmp / "plain")
    board = tmp / "board"
    logged = _main(tmp / "logged", "--tensorboard", str(board))
    return plain, logged, board


def _main(out, *extra):
    code = cli.main(["lottery", *FLAGS, "--out", str(out), *extra])
    assert code == 0
    (run_dir,) = Path(out).glob("lottery-*")
    return run_dir


def test_the_run_folder_does_not_depend_on_tensorboard(runs):
    plain, logged, _ = runs
    assert plain.name == logged.name
    def numbers(run):   # every column but the wall-clock seconds
        with open(run / "results.csv") as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]

    assert numbers(plain) == numbers(logged)


def test_every_unit_curve_equals_its_metrics_jsonl(runs):
    _, logged, board = runs
    units = sorted(p.parent for p in logged.rglob("metrics.jsonl"))
    assert len(units) == 2 * (1 + 2 * 2)   # seeds x (dense + levels x arms)
    for folder in units:
        name = folder.relative_to(logged.parent)   # lottery-<hash>/seed-0/level-01/ticket
        assert [p.name for p in (board / name).iterdir()] == [EVENT_FILE]
        got = scalars(board / name)
        rows = Unit(folder).read("metrics.jsonl")
        for tag in ("train_loss", "test_loss", "test_accuracy", "lr"):
            want = [(r["step"], r[tag]) for r in rows if r[tag] is not None]
            assert [s for s, _ in got[tag]] == [s for s, _ in want], (name, tag)
            assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want], rel=1e-6), (name, tag)


def test_per_level_accuracy_and_weights_remaining_equal_results_csv(runs):
    _, logged, board = runs
    with open(logged / "results.csv") as f:
        rows = list(csv.DictReader(f))
    for arm in ("ticket", "random_reinit"):
        got = scalars(board / logged.name / "levels" / arm)
        mine = [r for r in rows if r["arm"] == arm]
        levels = sorted({int(r["level"]) for r in mine})
        for seed in (0, 1):
            want = [(int(r["level"]), float(r["test_accuracy"])) for r in mine if r["seed"] == str(seed)]
            assert got[f"level/test_accuracy/seed-{seed}"] == [(lv, pytest.approx(v, rel=1e-6)) for lv, v in sorted(want)]
        mean = [sum(float(r["test_accuracy"]) for r in mine if int(r["level"]) == lv) / 2 for lv in levels]
        assert [v for _, v in got["level/test_accuracy"]] == pytest.approx(mean, rel=1e-6)
        remaining = [float(next(r for r in mine if int(r["level"]) == lv)["weights_remaining"]) for lv in levels]
        assert got["level/weights_remaining"] == [(lv, pytest.approx(v, rel=1e-6)) for lv, v in zip(levels, remaining)]
    assert [lv for lv, _ in scalars(board / logged.name / "levels" / "ticket")["level/test_accuracy"]] == [0, 1, 2]


def test_a_second_run_writes_nothing_twice(runs, tmp_path):
    _, logged, board = runs
    files = sorted(board.rglob("*"))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files if p.is_file()}
    again = _main(logged.parent, "--tensorboard", str(board))   # finished: every unit is read back
    assert again == logged
    assert sorted(board.rglob("*")) == files   # no new event file, no temporary left
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files if p.is_file()} == before
    run = board / logged.name / "seed-0" / "level-01" / "ticket"
    assert len(scalars(run)["test_accuracy"]) == 4   # steps 0, 10, 20, 30: once each


def test_missing_tensorboard_is_one_line_before_anything_runs(capsys, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    code = cli.main(["lottery", *FLAGS, "--out", str(tmp_path / "runs"), "--tensorboard", str(tmp_path / "tb")])
    _, err = capsys.readouterr()
    assert code == 2
    assert err == "ticketlab: error: --tensorboard needs TensorBoard: pip install 'ticketlab[tensorboard]'\n"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tb").exists()


@pytest.mark.parametrize("command", list(cli.EXPERIMENTS))
def test_every_experiment_takes_tensorboard_and_it_stays_out_of_the_hash(command):
    from ticketlab import spec as specs

    e = cli.EXPERIMENTS[command]
    parser = cli.Parser(prog=command)
    cli.experiment_command(e).arguments(parser)
    args = parser.parse_args(["--tensorboard", "tb"])
    spec = specs.from_arguments(e.spec_class(), args)
    assert spec.train.tensorboard == "tb"
    assert specs.spec_hash(spec) == specs.spec_hash(specs.build(e.spec_class(), {}))
