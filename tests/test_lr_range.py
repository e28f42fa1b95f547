"""The LR range test (Smith 2017) and the one-cycle schedule (Smith & Topin 2019): the rates follow the
requested curve exactly, the test stops once the smoothed loss diverges, its reading of a curve with a
known answer, the run's files and summary, and bad input is one line."""

from __future__ import annotations

import json
import math

import pytest

from ticketlab import spec as specs
from ticketlab.experiments import lr_range
from ticketlab.experiments.lr_range import LRRangeSpec, Smoothed, read_curve, run
from ticketlab.experiments.lottery import LotterySpec
from ticketlab.train import Schedule

TINY = {"dataset": "synthetic", "model": "mlp", "widths": (16,), "batch_size": 50, "steps": "40it", "workers": 1}


@pytest.mark.parametrize("curve", ["exp", "linear"])
def test_range_schedule_follows_the_requested_curve(curve):
    lo, hi, n = 1e-5, 3.0, 57
    s = Schedule.range_test(lo, hi, n, curve)
    rates = [s(i) for i in range(n)]
    assert rates[0] == lo and math.isclose(rates[-1], hi, rel_tol=1e-14)
    if curve == "exp":   # a constant ratio: equally spaced in log(lr)
        ratio = (hi / lo) ** (1 / (n - 1))
        assert all(math.isclose(b / a, ratio, rel_tol=1e-12) for a, b in zip(rates, rates[1:]))
    else:                # a constant difference
        assert all(math.isclose(b - a, (hi - lo) / (n - 1), rel_tol=1e-9) for a, b in zip(rates, rates[1:]))


@pytest.mark.parametrize("curve", ["exp", "linear"])
def test_the_optimizer_steps_at_exactly_the_curve_s_rates(curve, monkeypatch, tmp_path):
    used = []
    update = lr_range.RangeStepper.update

    def spy(self, step, lr):
        update(self, step, lr)
        used.append(self.opt.param_groups[0]["lr"])

    monkeypatch.setattr(lr_range.RangeStepper, "update", spy)
    spec = specs.from_mapping(LRRangeSpec, {**TINY, "curve": curve, "min_lr": 1e-4, "max_lr": 0.05})
    run(spec, out=str(tmp_path), progress=False)
    s = Schedule.range_test(1e-4, 0.05, 40, curve)
    assert used == [s(i) for i in range(40)]


def test_smoothing_is_a_bias_corrected_moving_average_and_stops_at_divergence():
    beta = 0.9
    watch = Smoothed(beta, 4.0)
    losses = [2.0, 1.0, 1.0, 0.5, 0.5, 100.0, 1.0]
    stops = [watch.add(x) for x in losses]
    avg, expected = 0.0, []
    for i, x in enumerate(losses[:5]):
        avg = beta * avg + (1 - beta) * x
        expected.append(avg / (1 - beta ** (i + 1)))
    assert watch.values == pytest.approx(expected, rel=1e-12) and watch.values[0] == 2.0
    assert stops == [False] * 5 + [True, True] and watch.diverged_at == 5   # smoothed 100 jumps past 4 x min
    nan = Smoothed(beta, 4.0)
    assert [nan.add(x) for x in (1.0, float("nan"))] == [False, True] and nan.diverged_at == 1


def test_reading_a_curve_with_a_known_answer():
    """loss = 2 - tanh(log10(lr) + 3) until lr = 0.1, then rising fast: steepest at lr = 1e-3 (tanh's
    inflection), lowest just before the rise, stop once the loss is 4 x its minimum."""
    lrs = [10 ** (-6 + 6 * i / 299) for i in range(300)]
    losses = [2 - math.tanh(math.log10(lr) + 3) if lr <= 0.1 else 1.0 + 50 * (math.log10(lr) + 1) for lr in lrs]
    got = read_curve(lrs, losses, beta=0.0, divergence=4.0)   # beta 0: the curve itself
    assert math.isclose(math.log10(got["suggested_lr"]), -3, abs_tol=0.03)
    assert got["suggested_lr"] == got["min_lr"]
    assert got["max_lr"] <= 0.1 and math.log10(got["max_lr"]) > -1.03
    assert got["stopped_early"] and got["stopped_lr"] > 0.1 and len(got["smoothed"]) == got["stopped_step"] < 300


def test_a_diverging_test_stops_early_and_writes_its_summary(tmp_path):
    spec = specs.from_mapping(LRRangeSpec, {**TINY, "optimizer": "sgd", "min_lr": 1e-3, "max_lr": 1e4, "steps": "60it",
                                            "seeds": (0, 1)})
    rows = run(spec, out=str(tmp_path), progress=False).rows
    assert all(r["stopped_early"] and r["steps_run"] < 60 for r in rows)
    folder = next(tmp_path.glob("lr-range-*"))
    summary = json.loads((folder / "summary.json").read_text())
    assert {"suggested_lr", "min_lr", "max_lr"} <= set(summary)
    assert 1e-3 <= summary["min_lr"] <= summary["max_lr"] <= 1e4 and summary["suggested_lr"] == summary["min_lr"]
    assert (folder / "lr_range.png").stat().st_size > 1000
    curve = [json.loads(line) for line in (folder / "seed-0" / "curve.jsonl").read_text().splitlines()]
    assert len(curve) == rows[0]["steps_run"] and curve[0]["lr"] == 1e-3


def test_one_cycle_rates_at_its_key_points():
    train = specs.from_mapping(LotterySpec, {"schedule": "one-cycle", "lr": 0.1, "steps": "101it"}).train
    s = Schedule.from_spec(train, 10)
    assert s(0) == pytest.approx(0.1 / 25, rel=1e-12)            # lr / div_factor
    assert s(30) == pytest.approx(0.1, rel=1e-12)                # the peak after pct_start = 0.3 of training
    assert s(15) == pytest.approx((0.1 / 25 + 0.1) / 2, rel=1e-12)  # linear warmup
    assert s(65) == pytest.approx((0.1 + 0.1 / 1e4) / 2, rel=1e-12)  # half-way through the cosine
    assert s(100) == pytest.approx(0.1 / 1e4, rel=1e-12)          # lr / final_div at the last step
    rates = [s(i) for i in range(101)]
    assert all(a < b for a, b in zip(rates[:30], rates[1:31])) and all(a > b for a, b in zip(rates[30:100], rates[31:]))


def test_existing_schedules_are_unchanged():
    """The formulas of constant, milestones and cosine (with warmup), written out: bit for bit."""
    base = {"lr": 0.1, "steps": "100it"}
    for extra in ({}, {"schedule": "cosine", "warmup": "10it"}, {"schedule": "milestones", "milestones": ("30it", "60it")}):
        s = Schedule.from_spec(specs.from_mapping(LotterySpec, {**base, **extra}).train, 10)
        for i in range(100):
            if extra.get("schedule") == "cosine":
                lr = 0.5 * 0.1 * (1 + math.cos(math.pi * min(max(i - 10, 0) / 90, 1.0)))
                lr = lr * ((i + 1) / 10) if i < 10 else lr
            elif extra.get("schedule") == "milestones":
                lr = 0.1 * 0.1 ** sum(i >= m for m in (30, 60))
            else:
                lr = 0.1
            assert s(i) == lr


@pytest.mark.parametrize("argv,message", [
    (["lr-range", "--min-lr", "0.1", "--max-lr", "0.01"], "--max-lr 0.01 must be above --min-lr 0.1"),
    (["lr-range", "--lr", "0.1"], "--lr is not used by lr-range"),
    (["lr-range", "--curve", "cubic"], "unknown curve 'cubic'"),
    (["lr-range", "--schedule", "cosine"], "lr-range sets the rate itself"),
    (["lr-range", "--smoothing", "1"], "--smoothing: must be in [0, 1)"),
    (["lottery", "--pct-start", "0.5"], "--pct-start, --div-factor and --final-div apply to --schedule one-cycle only"),
    (["lottery", "--schedule", "one-cycle", "--warmup", "5it"], "--warmup does not apply to --schedule one-cycle"),
    (["lottery", "--schedule", "one-cycle", "--pct-start", "1"], "--pct-start: must be in (0, 1)"),
])
def test_bad_input_is_one_line(run_cli, tmp_path, argv, message):
    code, out, err = run_cli(*argv, "--out", tmp_path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
