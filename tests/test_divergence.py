"""Divergence: a non-finite loss stops that unit, which is committed as diverged (and its dependents
too, without training); the rest of the experiment goes on and equals the same units run alone; results
are strict JSON; tables, plots and the end of a run say what diverged."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from ticketlab import models
from ticketlab.data import load
from ticketlab.io import to_json
from ticketlab.results import Results
from ticketlab.store import Unit
from ticketlab.train import OnStep, Schedule, fit
from ticketlab.train.fit import Checkpoints
from ticketlab.train.stacked import fit_stacked

DATA = load("synthetic")


class Train:
    """What a TrainSpec gives the loop (only the fields it reads)."""
    optimizer, lr, momentum, nesterov, weight_decay = "adam", 5e-3, 0.9, False, 0.0
    batch_size, eval_batch_size, eval_every = 20, 1000, "5it"


class SGD(Train):
    optimizer, lr, momentum = "sgd", 1e6, 0.0


def mlp(seed):
    return models.build("mlp", DATA.input_shape, DATA.num_classes, seed=seed, widths=(16, 16))


def strict(text: str):
    """json.loads that refuses NaN / Infinity (what strict parsers do)."""
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def blow_up_at(step):
    """A stackable callback that makes its model's weights overflow after `step` (its loss then is NaN)."""
    def hit(s, model):
        if s == step:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1e30)
    return OnStep(hit)


def no_nan(rows: list[dict]) -> bool:
    return all(not (isinstance(v, float) and not math.isfinite(v)) for r in rows for v in r.values())


# ------------------------------------------------------------------------------------------------ the loop
def test_a_lone_model_stops_at_the_evaluation_that_sees_a_non_finite_loss():
    steps = []
    healthy = fit(mlp(0), DATA, Train, seed=0, start=0, end=30, schedule=Schedule(lr=5e-3, kind="constant", total=30))
    assert not healthy.diverged and healthy.summary().get("diverged") is None and healthy.steps == 30
    r = fit(mlp(0), DATA, SGD, seed=0, start=0, end=30, schedule=Schedule(lr=1e6, kind="constant", total=30),
            on_step=lambda s, m: steps.append(s))
    assert r.diverged and r.diverged_step == 5 and r.steps == 5
    assert steps == [1, 2, 3, 4, 5], "training stopped at the evaluation that saw it"
    assert r.diverged_reason == "non-finite training loss (nan) at step 5 (mean of steps 1-5)"
    assert [row["step"] for row in r.metrics] == [0, 5]
    last = r.metrics[-1]
    assert last["diverged"] is True and last["lr"] == 1e6
    assert all(last[k] is None for k in ("test_loss", "test_accuracy", "train_loss")), "nulls, not NaN"
    assert no_nan(r.metrics)
    s = r.summary()
    assert s["diverged"] is True and s["diverged_step"] == 5 and s["train_steps"] == 5
    assert all(s[k] is None for k in ("test_accuracy", "test_loss", "best_accuracy", "early_stop_accuracy"))


def test_a_diverging_model_in_a_stack_leaves_the_others_bit_identical_and_resumes_diverged(tmp_path):
    schedule = Schedule(lr=5e-3, kind="constant", total=30)
    seeds = [0, 1, 2]
    callbacks = [[], [blow_up_at(7)], []]
    stacked = [mlp(s) for s in seeds]
    results = fit_stacked(stacked, DATA, Train, seeds=seeds, start=0, end=30, schedule=schedule, masks=[None] * 3,
                          checkpoints=[Checkpoints() for _ in seeds], callbacks=callbacks)
    assert [r.diverged for r in results] == [False, True, False]
    bad = results[1]
    assert bad.diverged_step == 10 and bad.steps == 10 and "mean of steps 6-10" in bad.diverged_reason
    assert [row["step"] for row in bad.metrics] == [0, 5, 10] and bad.metrics[-1]["diverged"] is True
    for k in (0, 2):   # the healthy models: exactly what they give alone, all 30 steps
        alone = mlp(seeds[k])
        ref = fit(alone, DATA, Train, seed=seeds[k], start=0, end=30, schedule=schedule)
        assert results[k].metrics == ref.metrics and results[k].steps == 30
        assert all(torch.equal(x, y) for x, y in zip(alone.state_dict().values(), stacked[k].state_dict().values()))
    # the diverged model's own record is what it gives alone
    lone_bad = fit(mlp(1), DATA, Train, seed=1, start=0, end=30, schedule=schedule, callbacks=[blow_up_at(7)])
    assert (lone_bad.metrics, lone_bad.steps, lone_bad.diverged_reason) == (bad.metrics, bad.steps, bad.diverged_reason)

    # interrupted after the divergence (checkpoint at 15) and resumed: the mark travels in the checkpoint
    units = [Unit(tmp_path / f"u{s}") for s in seeds]

    class Stop(Exception):
        pass

    def kill(s, model):
        if s == 16:
            raise Stop

    with pytest.raises(Stop):
        fit_stacked([mlp(s) for s in seeds], DATA, Train, seeds=seeds, start=0, end=30, schedule=schedule,
                    masks=[None] * 3, checkpoints=[Checkpoints(u, every=15) for u in units],
                    callbacks=[[], [blow_up_at(7)], [OnStep(kill)]])
    state = units[1].load_checkpoint()[1]
    assert state["step"] == 15 and state["diverged"]["step"] == 10
    resumed = [mlp(99) for _ in seeds]
    again = fit_stacked(resumed, DATA, Train, seeds=seeds, start=0, end=30, schedule=schedule, masks=[None] * 3,
                        checkpoints=[Checkpoints(u, every=15) for u in units], callbacks=[[], [], []])
    assert [(r.metrics, r.steps, r.diverged_reason) for r in again] == [(r.metrics, r.steps, r.diverged_reason) for r in results]
    for k in (0, 2):
        assert all(torch.equal(x, y) for x, y in zip(resumed[k].state_dict().values(), stacked[k].state_dict().values()))


def test_json_files_are_strict_with_null_for_non_finite_values():
    text = to_json({"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf")}], "d": (float("nan"),), "e": "nan"})
    assert strict(text) == {"a": None, "b": [1.5, None, {"c": None}], "d": [None], "e": "nan"}
    from ticketlab.store import encode
    assert encode("m.jsonl", [{"x": float("nan")}]) == b'{"x": null}\n'
    assert strict(Results([{"x": float("nan")}]).to_json()) == [{"x": None}]


def test_summaries_leave_diverged_units_out_and_count_them():
    rows = [{"level": 0, "arm": "ticket", "weights_remaining": 1.0, "test_accuracy": 0.9, "diverged": False},
            {"level": 0, "arm": "ticket", "weights_remaining": 1.0, "test_accuracy": 0.7, "diverged": False},
            {"level": 0, "arm": "ticket", "weights_remaining": 1.0, "test_accuracy": None, "diverged": True},
            {"level": 1, "arm": "ticket", "weights_remaining": "", "test_accuracy": "", "diverged": "True"}]   # a CSV row
    s = Results(rows).summary()
    assert (s[0]["n"], s[0]["diverged"]) == (2, 1) and s[0]["mean"] == pytest.approx(0.8)
    assert (s[1]["n"], s[1]["diverged"], s[1]["weights_remaining"]) == (0, 1, None) and math.isnan(s[1]["mean"])
    from ticketlab.report.tables import lottery
    lines = lottery(rows)
    assert lines[1].split() == ["0", "100.00%", "80.00", "±", "14.14%", "(1", "diverged)"]
    assert lines[2].split() == ["1", "-", "diverged"]


# ---------------------------------------------------------------------------------------------- experiments
FAST = ["--dataset", "synthetic", "--model", "mlp", "--widths", "32,32", "--steps", "60it", "--batch-size", "50",
        "--eval-every", "20it", "--no-progress"]


def every_json_is_strict(folder: Path) -> int:
    count = 0
    for f in folder.rglob("*.json*"):
        text = f.read_text()
        for part in (text.splitlines() if f.suffix == ".jsonl" else [text]):
            strict(part)
        count += 1
    return count


def test_a_diverging_run_exits_0_marks_every_unit_and_a_resume_trains_nothing(run_cli, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ["lottery", *FAST, "--levels", "2", "--optimizer", "sgd", "--lr", "1e6", "--out", out]
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    (folder,) = out.glob("lottery-*")
    rows = strict((folder / "results.json").read_text())
    assert len(rows) == 7 and all(r["diverged"] is True and r["test_accuracy"] is None for r in rows)
    first = rows[0]
    assert (first["level"], first["arm"]) == (0, "ticket")
    assert first["diverged_reason"] == "non-finite training loss (nan) at step 20 (mean of steps 1-20)"
    dense = f"{folder.name}/seed-0/level-00/ticket"
    assert all(r["diverged_reason"] == f"depends on a diverged unit: {dense}" for r in rows[1:])
    with open(folder / "results.csv") as f:
        assert {r["diverged"] for r in csv.DictReader(f)} == {"True"}
    assert every_json_is_strict(out) > 10
    summary = strict((folder / "summary.json").read_text())
    assert summary["dense_accuracy"] is None and all(g["n"] == 0 and g["diverged"] == 1 for g in summary["by_level_and_arm"])
    assert (folder / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # no NaN weights kept, and nothing was trained or pruned from them
    assert not (folder / "seed-0" / "level-00" / "ticket" / "final.safetensors").exists()
    assert sorted(p.name for p in (folder / "seed-0" / "level-01" / "ticket").iterdir()) == ["MANIFEST.json", "result.json"]
    # the tables say "diverged", never a number
    table = stdout.splitlines()[-3:]
    assert [line.split()[2:] for line in table] == [["diverged", "-", "-"], ["diverged"] * 3, ["diverged"] * 3]
    assert "%" not in "".join(line.split(maxsplit=2)[2] for line in table)
    (warning,) = [line for line in stderr.splitlines() if "diverged" in line]
    assert warning.startswith("ticketlab: warning: 7 of 7 units diverged (1 with a non-finite loss, 6 because")
    assert dense in warning
    code, shown, _ = run_cli("show", folder)
    assert code == 0 and shown.count("diverged") == 7 and "10.00%" not in shown

    # resumed: every unit is done (diverged), nothing is prepared or trained
    from ticketlab.experiments import lottery
    from ticketlab.run import execute

    def refuse(*a, **k):
        raise AssertionError("a diverged unit was computed again")

    monkeypatch.setattr(lottery.Lottery, "prepare", refuse)
    monkeypatch.setattr(execute, "run_jobs", refuse)
    code, _, stderr = run_cli(*args)
    assert code == 0 and "7 of 7 units diverged" in stderr
    assert strict((folder / "results.json").read_text()) == rows


SWEEP = """
experiment = "lottery"
[base]
dataset = "synthetic"
model = "mlp"
widths = [16]
batch_size = 50
eval_every = "20it"
steps = "40it"
levels = 1
controls = ["random_reinit"]
optimizer = "sgd"
momentum = 0.0
[zip]
lr = [0.5, 1e6]
"""


def test_a_sweep_point_that_diverges_leaves_the_others_equal_to_a_single_run(run_cli, tmp_path):
    file = tmp_path / "sweep.toml"
    file.write_text(SWEEP)
    out = tmp_path / "out"
    code, _, stderr = run_cli("sweep", file, "--seeds", "0,1", "--out", out, "--no-progress")
    assert code == 0, stderr
    (folder,) = out.glob("sweep-lottery-*")
    rows = strict((folder / "results.json").read_text())
    healthy = [r for r in rows if r["lr"] == 0.5]
    diverged = [r for r in rows if r["lr"] == 1e6]
    assert len(healthy) == len(diverged) == 6
    assert not any(r["diverged"] for r in healthy) and all(0 < r["test_accuracy"] <= 1 for r in healthy)
    assert all(r["diverged"] for r in diverged)
    assert "6 of 12 units diverged" in stderr
    assert (folder / "test_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # the healthy point is exactly the same run alone
    single = tmp_path / "single"
    code, _, stderr = run_cli("lottery", "--dataset", "synthetic", "--model", "mlp", "--widths", "16", "--batch-size", "50",
                              "--eval-every", "20it", "--steps", "40it", "--levels", "1", "--controls", "random_reinit",
                              "--optimizer", "sgd", "--momentum", "0", "--lr", "0.5", "--seeds", "0,1", "--out", single,
                              "--no-progress")
    assert code == 0 and "diverged" not in stderr
    (run,) = single.glob("lottery-*")
    alone = strict((run / "results.json").read_text())
    drop = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "lr")}
    assert [drop(r) for r in healthy] == [drop(r) for r in alone]
    for f in ("final.safetensors", "mask.safetensors"):
        a = Unit(out / run.name / "seed-1" / "level-01" / "ticket").read(f)
        b = Unit(run / "seed-1" / "level-01" / "ticket").read(f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_diverging_seed_stacked_beside_a_healthy_one(run_cli, tmp_path):
    """At SGD lr 20 seed 0's dense network diverges and seed 2's does not: stacked together, seed 2's units
    are those of a run of seed 2 alone, and the tables count seed 0 as diverged."""
    base = ["lottery", *FAST, "--levels", "1", "--controls", "none", "--optimizer", "sgd", "--momentum", "0", "--lr", "20"]
    code, stdout, stderr = run_cli(*base, "--seeds", "0,2", "--max-batch", "2", "--out", tmp_path / "both")
    assert code == 0, stderr
    assert "up to 2 models stacked" in stdout
    (folder,) = (tmp_path / "both").glob("lottery-*")
    rows = strict((folder / "results.json").read_text())
    by_seed = {s: [r for r in rows if r["seed"] == s] for s in (0, 2)}
    assert [r["diverged"] for r in by_seed[0]] == [True, True] and not any(r["diverged"] for r in by_seed[2])
    assert "(1 diverged)" in stdout and "1 with a non-finite loss, 1 because" in stderr
    code, _, stderr = run_cli(*base, "--seeds", "2", "--max-batch", "1", "--out", tmp_path / "alone")
    assert code == 0 and "diverged" not in stderr
    (alone,) = (tmp_path / "alone").glob("lottery-*")
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}
    assert [drop(r) for r in by_seed[2]] == [drop(r) for r in strict((alone / "results.json").read_text())]
    for level in ("level-00", "level-01"):
        a = Unit(folder / "seed-2" / level / "ticket").read("final.safetensors")
        b = Unit(alone / "seed-2" / level / "ticket").read("final.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)
    summary = strict((folder / "summary.json").read_text())["by_level_and_arm"]
    assert [(g["n"], g["diverged"]) for g in summary] == [(1, 1), (1, 1)]
