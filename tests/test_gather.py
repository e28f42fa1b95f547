"""`show`'s rows of unfinished runs and sweeps, and the rows index that keeps them fast."""

import json

import pytest

from ticketlab.report.gather import INDEX, run_rows, sweep_rows
from ticketlab.io import sha256_bytes
from ticketlab.store import MANIFEST, Unit


def make_run(folder, units: dict, results=None):
    run = Unit(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run.write("spec.json", {"experiment": "lottery"})
    for rel, row in units.items():
        Unit(folder / rel).commit({"result.json": row, "notes.txt": "not read by show"})
    if results is not None:
        run.write("results.csv", results)
    return folder


def test_an_unfinished_run_shows_its_finished_units_and_indexes_them(tmp_path):
    run = make_run(tmp_path / "r", {"seed-0/level-00/ticket": {"acc": 0.5}, "seed-0/level-01/ticket": {"acc": 0.6}})
    rows, partial = run_rows(run)
    assert partial and rows == [{"unit": "seed-0/level-00/ticket", "acc": 0.5}, {"unit": "seed-0/level-01/ticket", "acc": 0.6}]
    index = json.loads((run / INDEX).read_text())
    assert sorted(index["entries"]) == ["seed-0/level-00/ticket", "seed-0/level-01/ticket"]
    assert run_rows(run) == (rows, True)   # from the index


def test_a_non_finite_number_is_indexed_as_null_in_strict_json(tmp_path):
    """A result.json written by hand with NaN (Python's json reads it) still gets a strict index: null."""
    run = make_run(tmp_path / "r", {"u": {"acc": 0.5}})
    (run / "v").mkdir()
    (run / "v" / "result.json").write_bytes(raw := b'{"acc": NaN}')
    (run / "v" / MANIFEST).write_text(json.dumps({"format": 1, "complete": True, "files": {
        "result.json": {"size": len(raw), "sha256": sha256_bytes(raw)}}}))
    rows, _ = run_rows(run)
    assert rows[0] == {"unit": "u", "acc": 0.5} and rows[1]["unit"] == "v"
    text = (run / INDEX).read_text()
    assert "NaN" not in text and json.loads(text)["entries"]["v"]["rows"] == {"acc": None}


def test_a_recommitted_unit_replaces_its_indexed_row(tmp_path):
    run = make_run(tmp_path / "r", {"u": {"acc": 0.5}})
    run_rows(run)
    Unit(run / "u").commit({"result.json": {"acc": 0.75}})
    assert run_rows(run)[0] == [{"unit": "u", "acc": 0.75}]


def test_a_result_changed_behind_the_manifest_is_not_shown_even_when_indexed(tmp_path):
    run = make_run(tmp_path / "r", {"u": {"acc": 0.5}, "v": {"acc": 0.25}})
    run_rows(run)
    (run / "u" / "result.json").write_text('{"acc": 0.99}\n')   # an edit the manifest does not know
    assert run_rows(run)[0] == [{"unit": "v", "acc": 0.25}]


def test_unfinished_units_are_left_out(tmp_path):
    run = make_run(tmp_path / "r", {"u": {"acc": 0.5}})
    v = Unit(run / "v")
    v.write("result.json", {"acc": 0.1})   # listed, but the unit never completed
    assert run_rows(run)[0] == [{"unit": "u", "acc": 0.5}]


@pytest.mark.parametrize("garbage", [b"", b"{", b'{"format": 1, "entries": 3}', b'{"format": 99, "entries": {}}',
                                     b'{"format": 1, "entries": {"u": {"stamp": [1, 2], "rows": {"acc": 1}}}}'])
def test_a_broken_or_stale_index_is_rebuilt(tmp_path, garbage):
    run = make_run(tmp_path / "r", {"u": {"acc": 0.5}})
    (run / INDEX).write_bytes(garbage)
    assert run_rows(run)[0] == [{"unit": "u", "acc": 0.5}]
    assert json.loads((run / INDEX).read_text())["entries"]["u"]["rows"] == {"acc": 0.5}


def test_a_finished_run_is_its_results_csv(tmp_path):
    run = make_run(tmp_path / "r", {"u": {"acc": 0.5}}, results=[{"acc": "0.5", "level": "0"}])
    assert run_rows(run) == ([{"acc": "0.5", "level": "0"}], False)


def test_an_unfinished_sweep_gathers_its_points_with_their_axis_values(tmp_path):
    make_run(tmp_path / "lottery-a", {"u": {"acc": 0.5}}, results=[{"acc": "0.5"}])
    make_run(tmp_path / "lottery-b", {"u": {"acc": 0.7}, "w": {"acc": 0.8}})
    points = [{"lr": 0.1, "run": "lottery-a"}, {"lr": 0.2, "run": "lottery-b"}, {"lr": 0.3, "run": "lottery-c"}]
    sweep = tmp_path / "sweep-x"
    sweep.mkdir()
    rows, partial = sweep_rows(sweep, points)
    assert partial
    assert rows == [{"lr": 0.1, "acc": "0.5"}, {"lr": 0.2, "unit": "u", "acc": 0.7}, {"lr": 0.2, "unit": "w", "acc": 0.8}]
    assert sweep_rows(sweep, points) == (rows, True)
    assert not (tmp_path / "lottery-b" / INDEX).exists()   # one index, in the folder shown


def test_show_of_an_unfinished_sweep_on_the_command_line(tmp_path, run_cli):
    make_run(tmp_path / "lottery-a", {"seed-0/level-00/ticket": {"test_accuracy": 0.5}})
    sweep = Unit(tmp_path / "sweep-x")
    sweep.path.mkdir()
    sweep.write("spec.json", {"experiment": "sweep", "points": [{"lr": 0.1, "run": "lottery-a"}]})
    code, out, _ = run_cli("show", sweep.path)
    assert code == 0 and "0.5" in out and "unfinished" in out
