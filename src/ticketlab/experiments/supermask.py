"""Learned supermasks: train a mask, not the weights (Zhou et al. 2019, Section 5; Ramanujan et al. 2020).

Every weight of the network stays at its random initial value (or a signed constant of it); only a score
per prunable weight is trained, and the forward pass uses `w * mask(score)`:

  bernoulli   mask ~ Bernoulli(sigmoid(score)) with the straight-through estimator, scores start at 0,
              dynamic weight rescaling; the mask is also sampled at test time (reported as
              `test_accuracy`; `expected_mask_accuracy` uses sigmoid(score) instead). Defaults as Zhou et
              al. for FC nets: SGD, momentum 0.9, lr 100.
  edge-popup  top-k |score| per layer at `--kept`, scores kaiming_uniform(a=sqrt 5), weights the signed
              Kaiming constant sqrt(2/fan_in) (Ramanujan et al.); SGD, momentum 0.9, lr 0.1.

One unit of the store per seed, checkpointed and resumable bit for bit.
"""

from __future__ import annotations

import time

import torch

from .. import models, seeding
from ..report import plots
from ..results import Results, diverged_columns
from ..sparse.supermask import Supermask, signed_constant, signed_kaiming_constant
from ..store import Unit
from ..run import Experiment, Report, Work, runner
from ..train import Schedule, evaluate
from ..train.callbacks import Progress
from ..train.fit import Checkpoints
from ..train.loop import train_loop
from ..train.steppers import SupermaskStepper
from .common import Setup

from ..specs.supermask import WEIGHTS, DEFAULT_LR, DEFAULT_WEIGHTS, SupermaskTrainSpec, SupermaskOptions, SupermaskSpec  # noqa: F401 (torch-free, for the CLI)
from ..report.tables import supermask as table, supermask_line  # noqa: F401 (torch-free, for `ticketlab show`)


# ----------------------------------------------------------------------------------------------- units
class SupermaskTrainer:
    """Builds, trains (resumably) and evaluates the supermask of one seed."""

    def __init__(self, spec: SupermaskSpec, setup: Setup):
        self.spec, self.setup = spec, setup
        self.train = spec.resolved_train()
        self.schedule = Schedule.from_spec(self.train, setup.iterations_per_epoch)
        self.every = max(setup.step(self.train.eval_every), 1)
        probe = setup.new_model_like()
        self.names = models.prunable_names(probe)

    def build(self, seed: int) -> Supermask:
        net = self.setup.build_model(seed)
        weights = self.spec.resolved_weights()
        if weights == "signed_constant":
            signed_constant(net, self.names)
        elif weights == "signed_kaiming_constant":
            signed_kaiming_constant(net, self.names)
        o = self.spec.supermask
        return Supermask(net, self.names, o.method, kept=o.kept, rescale=o.rescale, seed=seed)

    def _generator(self, tag: str, seed: int, step: int) -> torch.Generator:
        g = torch.Generator(device=self.setup.device)
        g.manual_seed(seeding.derive_seed(tag, seed, step))
        return g

    def evaluate(self, sm: Supermask, seed: int, step: int) -> dict:
        """Test loss and accuracy with a sampled mask (fixed for the whole test set), and for bernoulli
        also with the expected mask sigmoid(score)."""
        data, bs = self.setup.data, self.train.eval_batch_size
        masks = sm.fix_sample(self._generator("supermask-test", seed, step))
        loss, acc = evaluate(sm, data.test_x, data.test_y, bs)
        row = {"step": step, "test_loss": loss, "test_accuracy": acc, "weights_remaining": sm.density(masks)}
        sm.clear_sample()
        if sm.method == "bernoulli":
            sm.mode = "expected"
            row["expected_mask_loss"], row["expected_mask_accuracy"] = evaluate(sm, data.test_x, data.test_y, bs)
            with torch.no_grad():
                row["expected_density"] = sm.density()
            sm.mode = "train"
        return row

    def fit(self, sm: Supermask, seed: int, checkpoints: Checkpoints, progress=None) -> list[dict]:
        """Train the scores of `sm` (resumably, through `checkpoints`); the metrics rows."""
        return self.fit_result(sm, seed, checkpoints, progress).metrics

    def fit_result(self, sm: Supermask, seed: int, checkpoints: Checkpoints, progress=None):
        """`fit`, giving the loop's FitResult (which also says whether the training diverged)."""
        stepper = SupermaskStepper(sm, self.setup.data, self.train, seed=seed, device=self.setup.device,
                                   generator=lambda step: self._generator("supermask-train", seed, step),
                                   evaluate=lambda step: self.evaluate(sm, seed, step))
        callbacks = [Progress(progress)] if progress is not None else []
        fitted = train_loop(stepper, [callbacks], start=0, end=self.setup.total_steps, schedule=self.schedule,
                            eval_every=self.every, checkpoints=[checkpoints])
        return fitted[0]

    def unit_files(self, unit: Unit, seed: int, progress) -> dict:
        """Train one seed's supermask (resuming from the unit's checkpoint) and give the unit's files."""
        began = time.perf_counter()
        sm = self.build(seed)
        every = self.setup.step(self.train.checkpoint_every)
        fitted = self.fit_result(sm, seed, Checkpoints(unit, every), progress=progress)
        metrics = fitted.metrics
        if fitted.diverged:   # no scores or mask to keep (see run/execute.py)
            result = {"method": sm.method, "seed": seed, "weights": self.spec.resolved_weights(), "weights_remaining": None,
                      "test_accuracy": None, "train_steps": fitted.steps, **fitted.divergence(),
                      "seconds": round(time.perf_counter() - began, 3)}
            return {"metrics.jsonl": metrics, "result.json": result}
        last = metrics[-1]
        masks = sm.fix_sample(self._generator("supermask-test", seed, last["step"]))
        result = {"method": sm.method, "seed": seed, "weights": self.spec.resolved_weights(),
                  "weights_remaining": last["weights_remaining"], "test_accuracy": last["test_accuracy"],
                  "expected_mask_accuracy": last.get("expected_mask_accuracy"), "expected_density": last.get("expected_density"),
                  "best_accuracy": max(r["test_accuracy"] for r in metrics), "test_loss": last["test_loss"],
                  "train_steps": self.setup.total_steps, "seconds": round(time.perf_counter() - began, 3)}
        return {"scores.safetensors": {n: sm.scores[n.replace(".", "__")].detach().cpu() for n in sm.names},
                "mask.safetensors": {n: m.detach().cpu().bool() for n, m in masks.items()},
                "metrics.jsonl": metrics, "result.json": result}


class LearnedSupermask(Experiment):
    """One unit per seed: a supermask trained over that seed's frozen random weights (its own loop:
    `SupermaskTrainer`), so seeds train side by side on the worker processes."""

    name = "supermask"

    def __init__(self, spec: SupermaskSpec, setup: Setup):
        super().__init__(spec, setup)
        self.trainer = SupermaskTrainer(spec, setup)  # bad input fails here, before the run folder exists
        self.stack_limit = 1

    def units(self) -> list[Work]:
        return [Work(("seed", s), cost=self.setup.total_steps, label=f"seed {s} {self.spec.supermask.method}")
                for s in self.spec.supermask.seeds]

    def unit_of(self, key) -> Unit:
        return self.run.unit(f"seed-{key[1]}")

    def prepare(self, key):
        return lambda progress: self.trainer.unit_files(self.unit_of(key), key[1], progress)

    def header_lines(self) -> list[str]:
        return [f"{'seed':>4} {'method':>10} {'kept':>7} {'test acc':>9} {'expected-mask acc':>18}"]

    def progress_lines(self, key, r: dict, done: dict) -> list[str]:
        return [supermask_line(r)]

    def report(self, results: dict) -> Report:
        spec = self.spec
        seeds = spec.supermask.seeds
        rows = [{**{k: results[("seed", s)].get(k) for k in COLUMNS}, **diverged_columns(results[("seed", s)])} for s in seeds]
        healthy = [r for r in rows if not r["diverged"]]
        curves = {r["seed"]: self.unit_of(("seed", r["seed"])).read("metrics.jsonl") for r in healthy}
        title = f"{spec.model.model} on {spec.data.dataset}: learned supermask ({spec.supermask.method}, {spec.resolved_weights()} weights)"
        acc = [r["test_accuracy"] for r in healthy]
        dropped = len(rows) - len(healthy)
        summary = {"experiment": spec.experiment, "method": spec.supermask.method, "seeds": list(seeds), "diverged": dropped,
                   "mean_test_accuracy": sum(acc) / len(acc) if acc else None,
                   "mean_weights_remaining": sum(r["weights_remaining"] for r in healthy) / len(healthy) if healthy else None,
                   "rows": rows}
        return Report(rows, summary, {"accuracy.png": plots.supermask_curves(curves, title + plots.diverged_note(dropped))})


# ------------------------------------------------------------------------------------------------- run
COLUMNS = ("method", "seed", "weights", "weights_remaining", "test_accuracy", "expected_mask_accuracy",
           "expected_density", "best_accuracy", "test_loss", "train_steps", "seconds")

EXPERIMENT = LearnedSupermask   # what a sweep of this experiment runs


def run(spec: SupermaskSpec, *, out: str = "runs", force: bool = False, progress: bool | None = None,
        wait: bool = False) -> Results:
    """Run (or resume) a learned-supermask experiment; returns one row per seed."""
    return runner.run(LearnedSupermask, spec, out=out, force=force, progress=progress, wait=wait)
