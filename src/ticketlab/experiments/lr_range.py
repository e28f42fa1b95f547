"""The LR range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", Section 3.3).

One short training per seed in which the rate rises every step from --min-lr to --max-lr, geometrically
(`exp`: lr_i = min * (max / min)^(i / (N - 1))) or arithmetically (`linear`), through the one training loop
(`train_loop`, the schedule `Schedule.range_test`). The loss of every step is smoothed by a bias-corrected
exponential moving average (beta = --smoothing: a_i = beta a_{i-1} + (1 - beta) loss_i, s_i = a_i / (1 -
beta^(i+1))), and the test stops early once s_i exceeds --divergence times its minimum so far (or a loss is
not finite): the loss has exploded.

Read off the smoothed curve before that point:
  min_lr        the steepest descent: the most negative slope of s against log(lr) (central differences),
                among the points up to the minimum of s, the first tenth of the planned steps left out (there
                the average holds a few losses only, and its noise would look steepest; fastai skips them too);
  max_lr        the point before divergence: where s is lowest (beyond it the loss only rises);
  suggested_lr  the steepest descent (= min_lr), the rate to train at; [min_lr, max_lr] is the range for
                cyclical / one-cycle schedules (--schedule one-cycle --lr max_lr).
The summary gives each of them as the geometric mean over seeds. A unit is one seed; it is short and has
no checkpoint (an interrupted unit starts again, with the same numbers).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .. import seeding
from ..report import plots
from ..results import Results
from ..run import Experiment, Report, Work, runner
from ..store import Unit
from ..train import Schedule
from ..train.callbacks import Progress
from ..train.fit import Checkpoints
from ..train.loop import train_loop
from ..train.steppers import ModelStepper
from .common import Setup

from ..specs.lr_range import CURVES, LRRangeSpec, RangeOptions, RangeTrainSpec  # noqa: F401 (torch-free, for the CLI)
from ..report.tables import lr_range as table, lr_range_line  # noqa: F401 (torch-free, for `ticketlab show`)


# ------------------------------------------------------------------------------------------- the curve
class Smoothed:
    """The bias-corrected moving average of the losses so far, and whether they have diverged."""

    def __init__(self, beta: float, divergence: float):
        self.beta, self.divergence = beta, divergence
        self.average, self.values, self.diverged_at = 0.0, [], None

    def add(self, loss: float) -> bool:
        """Take one step's loss; True once the test should stop (this loss diverged)."""
        if self.diverged_at is not None:
            return True
        if not math.isfinite(loss):
            self.diverged_at = len(self.values)
            return True
        self.average = self.beta * self.average + (1 - self.beta) * loss
        value = self.average / (1 - self.beta ** (len(self.values) + 1))
        if self.values and value > self.divergence * min(self.values):
            self.diverged_at = len(self.values)
            return True
        self.values.append(value)
        return False


def read_curve(lrs: list[float], losses: list[float], beta: float = 0.98, divergence: float = 4.0) -> dict:
    """The range test's reading of one curve (see the module docstring): the smoothed losses kept (those
    before divergence), the steepest-descent rate, the rate at the smoothed minimum, and where it stopped.
    `lrs`: the rates of every planned step; `losses`: those of the steps run (as many or fewer)."""
    smooth = Smoothed(beta, divergence)
    for loss in losses:
        if smooth.add(loss):
            break
    s = np.asarray(smooth.values, dtype=np.float64)
    n = len(s)
    x = np.log(np.asarray(lrs[:n], dtype=np.float64))
    lowest = int(np.argmin(s))
    skip = min(len(lrs) // 10, max(lowest - 1, 0))
    if n >= 3 and lowest >= 1:
        slopes = np.gradient(s, x)
        steepest = skip + int(np.argmin(slopes[skip:lowest + 1]))
    else:   # too short a curve to have a slope: the smallest rate
        slopes, steepest = np.zeros(n), 0
    return {"smoothed": s.tolist(), "steepest_index": steepest, "lowest_index": lowest,
            "min_lr": float(lrs[steepest]), "max_lr": float(lrs[lowest]), "suggested_lr": float(lrs[steepest]),
            "min_smoothed_loss": float(s[lowest]), "stopped_early": smooth.diverged_at is not None,
            "stopped_step": n if smooth.diverged_at is not None else None,
            "stopped_lr": float(lrs[n]) if smooth.diverged_at is not None and n < len(lrs) else None}


class RangeStepper(ModelStepper):
    """A `ModelStepper` that keeps every step's training loss (the range test reads each one)."""

    def __init__(self, *args, watch: Smoothed, **kwargs):
        super().__init__(*args, **kwargs)
        self.losses: list[float] = []
        self.watch = watch

    def forward_backward(self, step: int) -> torch.Tensor:
        loss = super().forward_backward(step)
        self.losses.append(float(loss))
        self.watch.add(self.losses[-1])
        return loss


class StopOnDivergence:
    """Ends the range test once its smoothed loss diverged (the stepper's watch says so)."""

    def __init__(self, watch: Smoothed):
        self.watch = watch

    def after_step(self, step: int, model) -> bool:
        return self.watch.diverged_at is not None


# ----------------------------------------------------------------------------------------------- units
class RangeTest:
    """Runs one seed's range test and reads its curve."""

    def __init__(self, spec: LRRangeSpec, setup: Setup):
        self.spec, self.setup = spec, setup
        self.train = spec.resolved_train()
        r = spec.range
        self.schedule = Schedule.range_test(r.min_lr, r.max_lr, setup.total_steps, r.curve)

    def run(self, seed: int, progress=None) -> dict:
        r = self.spec.range
        model = self.setup.build_model(seed)
        watch = Smoothed(r.smoothing, r.divergence)
        stepper = RangeStepper(model, self.setup.data, self.train, seed=seed, device=self.setup.device, watch=watch)
        callbacks = [StopOnDivergence(watch)] + ([Progress(progress)] if progress is not None else [])
        total = self.setup.total_steps
        train_loop(stepper, [callbacks], start=0, end=total, schedule=self.schedule, eval_every=total,
                   checkpoints=[Checkpoints()], rng_seed=seeding.derive_seed("fit", seed, 0))
        lrs = [self.schedule(i) for i in range(total)]
        return {"lrs": lrs, "losses": stepper.losses, **read_curve(lrs, stepper.losses, r.smoothing, r.divergence)}

    def unit_files(self, unit: Unit, seed: int, progress) -> dict:
        began = time.perf_counter()
        got = self.run(seed, progress)
        curve = [{"step": i, "lr": lr, "loss": loss, "smoothed_loss": got["smoothed"][i] if i < len(got["smoothed"]) else None}
                 for i, (lr, loss) in enumerate(zip(got["lrs"], got["losses"]))]   # the steps run
        result = {"seed": seed, "optimizer": self.train.optimizer, "curve": self.spec.range.curve,
                  **{k: got[k] for k in ("suggested_lr", "min_lr", "max_lr", "min_smoothed_loss", "stopped_early",
                                         "stopped_step", "stopped_lr")},
                  "steps_run": len(got["losses"]), "seconds": round(time.perf_counter() - began, 3)}
        return {"curve.jsonl": [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in row.items()}
                                for row in curve], "result.json": result}


class LRRange(Experiment):
    """One unit per seed: a range test of that seed's network."""

    name = "lr-range"
    metrics = ("suggested_lr", "max_lr")

    def __init__(self, spec: LRRangeSpec, setup: Setup):
        super().__init__(spec, setup)
        self.test = RangeTest(spec, setup)   # bad input fails here, before the run folder exists
        self.stack_limit = 1

    def train_settings(self):
        return self.spec.resolved_train()

    def units(self) -> list[Work]:
        return [Work(("seed", s), cost=self.setup.total_steps, label=f"seed {s} lr range")
                for s in self.spec.range.seeds]

    def unit_of(self, key) -> Unit:
        return self.run.unit(f"seed-{key[1]}")

    def prepare(self, key):
        return lambda progress: self.test.unit_files(self.unit_of(key), key[1], progress)

    def header_lines(self) -> list[str]:
        return [table([])[0]]

    def progress_lines(self, key, r: dict, done: dict) -> list[str]:
        return [lr_range_line(r)]

    def report(self, results: dict) -> Report:
        spec = self.spec
        seeds = spec.range.seeds
        rows = [{k: results[("seed", s)].get(k) for k in COLUMNS} for s in seeds]
        curves = {s: self.unit_of(("seed", s)).read("curve.jsonl") for s in seeds}

        def geomean(key):
            values = [r[key] for r in rows if r.get(key)]
            return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None

        summary = {"experiment": spec.experiment, "optimizer": self.train_settings().optimizer, "curve": spec.range.curve,
                   "seeds": list(seeds), "suggested_lr": geomean("suggested_lr"), "min_lr": geomean("min_lr"),
                   "max_lr": geomean("max_lr"), "tested": [spec.range.min_lr, spec.range.max_lr], "rows": rows}
        title = (f"{spec.model.model} on {spec.data.dataset}: LR range test ({summary['optimizer']}, {spec.range.curve}, "
                 f"{self.setup.total_steps} steps)")
        return Report(rows, summary, {"lr_range.png": plots.lr_range(curves, summary, title)})


# ------------------------------------------------------------------------------------------------- run
COLUMNS = ("seed", "optimizer", "curve", "suggested_lr", "min_lr", "max_lr", "min_smoothed_loss", "stopped_early",
           "stopped_step", "stopped_lr", "steps_run", "seconds")

EXPERIMENT = LRRange   # what a sweep of this experiment runs


def run(spec: LRRangeSpec, *, out: str = "runs", force: bool = False, progress: bool | None = None,
        wait: bool = False) -> Results:
    """Run (or resume) an LR range test; one row per seed."""
    return runner.run(LRRange, spec, out=out, force=force, progress=progress, wait=wait)
