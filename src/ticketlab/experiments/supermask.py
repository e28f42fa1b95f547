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

import dataclasses
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from .. import models, seeding
from ..data.batches import BatchOrder
from ..errors import UserError
from ..io import CorruptFile
from ..report import plots
from ..report.progress import Bars
from ..results import Results
from ..sparse.supermask import METHODS, Supermask, signed_constant, signed_kaiming_constant
from ..spec import (Bool, Choice, DataSpec, Float, Int, ListOf, ModelSpec, Optional, TrainSpec, setting)
from ..store import Run, Unit
from ..train import Schedule, evaluate, make_optimizer
from ..train.fit import Checkpoints, optimizer_from_flat, optimizer_to_flat
from .common import Setup

WEIGHTS = ("init", "signed_constant", "signed_kaiming_constant")
DEFAULT_LR = {"bernoulli": 100.0, "edge-popup": 0.1}
DEFAULT_WEIGHTS = {"bernoulli": "init", "edge-popup": "signed_kaiming_constant"}


@dataclass(frozen=True)
class SupermaskTrainSpec(TrainSpec):
    """How the scores are trained (the weights never are)."""

    optimizer: str = setting("sgd", "optimizer of the scores: adam, sgd", Choice("optimizer", lambda: ("sgd", "adam")))
    lr: float | None = setting(None, "learning rate of the scores; none: 100 for bernoulli, 0.1 for edge-popup",
                               Optional(Float(0, None, low_open=True)))


@dataclass(frozen=True)
class SupermaskOptions:
    """Which supermask is learned, over which frozen weights."""

    method: str = setting("bernoulli", f"supermask method: {', '.join(METHODS)}", Choice("supermask method", lambda: METHODS))
    kept: float = setting(0.5, "edge-popup: fraction of each layer's weights kept (top-k |score|)", Float(0, 1, low_open=True))
    weights: str | None = setting(None, f"frozen weights: {', '.join(WEIGHTS)}; none: init for bernoulli, "
                                  "signed_kaiming_constant for edge-popup", Optional(Choice("supermask weights", lambda: WEIGHTS)))
    rescale: bool = setting(True, "bernoulli: dynamic weight rescaling, weights x numel / sum(mask) per layer", Bool())
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2", ListOf(Int(0), unique=True), hashed=False)


@dataclass(frozen=True)
class SupermaskSpec:
    experiment: ClassVar[str] = "supermask"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: SupermaskTrainSpec = field(default_factory=SupermaskTrainSpec)
    supermask: SupermaskOptions = field(default_factory=SupermaskOptions)

    def validate(self) -> None:
        s = self.supermask
        if s.method != "edge-popup" and s.kept != 0.5:
            raise UserError("--kept applies to --method edge-popup only (bernoulli learns how many weights it keeps)")

    def resolved_train(self) -> TrainSpec:
        """The train settings with the method's default learning rate filled in."""
        lr = self.train.lr if self.train.lr is not None else DEFAULT_LR[self.supermask.method]
        return dataclasses.replace(self.train, lr=lr)

    def resolved_weights(self) -> str:
        return self.supermask.weights or DEFAULT_WEIGHTS[self.supermask.method]


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
        data, device, total = self.setup.data, self.setup.device, self.setup.total_steps
        order = BatchOrder(data, self.train.batch_size, seed, augment=True)
        params = list(sm.scores.parameters())
        opt = make_optimizer(params, self.train, device)
        metrics: list[dict] = []
        running = torch.zeros((), dtype=torch.float64, device=device)
        count, step = 0, 0
        resumed = checkpoints.load()
        if resumed is not None:
            tensors, state = resumed
            sm.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            optimizer_from_flat(opt, {k: v.to(device) if k.startswith("opt.") and v.dim() else v for k, v in tensors.items()},
                                 state["optimizer"])
            running = tensors["running_loss"].to(device)
            count, step, metrics = state["count"], state["step"], state["metrics"]
        if not metrics:
            metrics.append({**self.evaluate(sm, seed, 0), "train_loss": None})
        sm.train()
        while step < total:
            x, y = order.batch(step)
            sm.generator = self._generator("supermask-train", seed, step)
            loss = F.cross_entropy(sm(x), y)
            for p in params:
                p.grad = None
            loss.backward()
            for g in opt.param_groups:
                g["lr"] = self.schedule(step)
            opt.step()
            running += loss.detach()
            count += 1
            step += 1
            at_eval = step % self.every == 0 or step == total
            if at_eval:
                metrics.append({**self.evaluate(sm, seed, step), "train_loss": (running / count).item()})
                running.zero_()
                count = 0
            if step < total and checkpoints.due(step, at_eval):
                tensors = {f"model.{k}": v for k, v in sm.state_dict().items()}
                opt_tensors, opt_meta = optimizer_to_flat(opt)
                tensors.update(opt_tensors)
                tensors["running_loss"] = running
                checkpoints.save(tensors, {"step": step, "count": count, "metrics": metrics, "optimizer": opt_meta})
            if progress is not None:
                progress(step)
        return metrics

    def run_unit(self, unit: Unit, seed: int, bars: Bars) -> dict:
        if unit.is_done():
            try:
                return unit.read("result.json")
            except CorruptFile:
                pass
        began = time.perf_counter()
        sm = self.build(seed)
        task = bars.add(f"seed {seed} {sm.method}", self.setup.total_steps)
        every = self.setup.step(self.train.checkpoint_every)
        metrics = self.fit(sm, seed, Checkpoints(unit, every), progress=lambda n: bars.set(task, n))
        bars.progress.remove_task(task)
        last = metrics[-1]
        masks = sm.fix_sample(self._generator("supermask-test", seed, last["step"]))
        result = {"method": sm.method, "seed": seed, "weights": self.spec.resolved_weights(),
                  "weights_remaining": last["weights_remaining"], "test_accuracy": last["test_accuracy"],
                  "expected_mask_accuracy": last.get("expected_mask_accuracy"), "expected_density": last.get("expected_density"),
                  "best_accuracy": max(r["test_accuracy"] for r in metrics), "test_loss": last["test_loss"],
                  "train_steps": self.setup.total_steps, "seconds": round(time.perf_counter() - began, 3)}
        unit.commit({"scores.safetensors": {n: sm.scores[n.replace(".", "__")].detach().cpu() for n in sm.names},
                     "mask.safetensors": {n: m.detach().cpu().bool() for n, m in masks.items()},
                     "metrics.jsonl": metrics, "result.json": result})
        unit.clear_checkpoint()
        return result


# ------------------------------------------------------------------------------------------------- run
COLUMNS = ("method", "seed", "weights", "weights_remaining", "test_accuracy", "expected_mask_accuracy",
           "expected_density", "best_accuracy", "test_loss", "train_steps", "seconds")


def run(spec: SupermaskSpec, *, out: str = "runs", force: bool = False, progress: bool | None = None) -> Results:
    """Run (or resume) a learned-supermask experiment; returns one row per seed."""
    setup = Setup.prepare(spec)
    trainer = SupermaskTrainer(spec, setup)  # bad input fails here, before the run folder exists
    run_folder = Run.open(out, spec, force=force)
    rows, curves = [], {}
    with Bars(progress) as bars:
        bars.print(f"run folder: {run_folder.path}")
        bars.print(f"{'seed':>4} {'method':>10} {'kept':>7} {'test acc':>9} {'expected-mask acc':>18}")
        for seed in spec.supermask.seeds:
            unit = run_folder.unit(f"seed-{seed}")
            r = trainer.run_unit(unit, seed, bars)
            rows.append(r)
            curves[seed] = unit.read("metrics.jsonl")
            exp = r.get("expected_mask_accuracy")
            bars.print(f"{seed:>4} {r['method']:>10} {100 * r['weights_remaining']:>6.2f}% {100 * r['test_accuracy']:>8.2f}% "
                       f"{'-' if exp is None else f'{100 * exp:.2f}%':>18}")
    results = Results([{k: r.get(k) for k in COLUMNS} for r in rows])
    title = f"{spec.model.model} on {spec.data.dataset}: learned supermask ({spec.supermask.method}, {spec.resolved_weights()} weights)"
    run_folder.write("results.csv", results.rows)
    run_folder.write("results.json", results.rows)
    acc = [r["test_accuracy"] for r in rows]
    run_folder.write("summary.json", {"experiment": spec.experiment, "method": spec.supermask.method,
                                      "seeds": list(spec.supermask.seeds), "mean_test_accuracy": sum(acc) / len(acc),
                                      "mean_weights_remaining": sum(r["weights_remaining"] for r in rows) / len(rows),
                                      "rows": results.rows})
    run_folder.write("accuracy.png", plots.supermask_curves(curves, title))
    return results


def table(rows: list[dict]) -> list[str]:
    """The lines `ticketlab show` can print for a supermask run: one per seed, then the mean."""
    lines = [f"{'seed':>4} {'method':>10} {'kept':>7} {'test acc':>9} {'expected-mask acc':>18}"]
    for r in rows:
        exp = r.get("expected_mask_accuracy")
        exp = None if exp in (None, "") else float(exp)
        lines.append(f"{int(r['seed']):>4} {r['method']:>10} {100 * float(r['weights_remaining']):>6.2f}% "
                     f"{100 * float(r['test_accuracy']):>8.2f}% {'-' if exp is None else f'{100 * exp:.2f}%':>18}")
    acc = [float(r["test_accuracy"]) for r in rows]
    lines.append(f"{'mean':>4} {'':>10} {'':>7} {100 * sum(acc) / max(len(acc), 1):>8.2f}%")
    return lines
