"""The lottery-ticket experiment: iterative magnitude pruning with rewinding (Frankle & Carbin 2019;
Frankle et al. 2020), fine-tuning and learning-rate rewinding (Renda et al. 2020), and the
random-reinit / random-prune / reshuffle controls.

For each seed: train the dense network (level 0), then for levels 1..L prune `prune_fraction` of the
remaining weights by the criterion (large_final = magnitude) and retrain:

  rewind     weights reset to the rewind point w_k (k = `--rewind`, 0it = init), schedule replayed from k
  finetune   keep the previous level's weights, train `--retrain-steps` at the final learning rate
  lr-rewind  keep the previous level's weights, replay the schedule's last `--retrain-steps`

Controls at level l use the ticket's mask of level l and are trained like a rewound ticket, on [k, T):
random_reinit (same mask, a fresh seeded init), random_prune (a random mask with the same per-layer
counts, on w_k), reshuffle (w_k shuffled within each layer among the kept positions).

Every (seed, level, arm) is one unit of the store: resumable, verified, skipped when done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .. import seeding, steps
from ..errors import UserError
from ..report import plots
from ..report.progress import Bars
from ..results import Results
from ..sparse import Mask, layer_fractions, prune, random_mask_like, score
from ..spec import (Choice, DataSpec, Int, ListOf, ModelSpec, Optional, PruneSpec, Step, TrainSpec,
                    setting)
from ..store import Run, Unit
from ..io import CorruptFile
from ..train import Schedule, fit
from ..train.fit import Checkpoints
from .common import Setup
from .. import models

RETRAIN = ("rewind", "finetune", "lr-rewind")
CONTROLS = ("random_reinit", "random_prune", "reshuffle")


@dataclass(frozen=True)
class LotteryOptions:
    """The pruning loop: levels, rewinding, retraining and controls."""

    levels: int = setting(10, "pruning levels after the dense network (level 0)", Int(0))
    rewind: str = setting("0it", "rewind point k: weights (and schedule) reset to step k (0it = init)", Step())
    retrain: str = setting("rewind", f"retraining after each pruning: {', '.join(RETRAIN)}", Choice("retrain mode", lambda: RETRAIN))
    retrain_steps: str | None = setting(None, "t, the retraining length of finetune / lr-rewind (default: the whole training length)",
                                        Optional(Step()))
    controls: tuple = setting(("random_reinit", "random_prune"), f"control arms at every level: {', '.join(CONTROLS)} (none: no controls)",
                              ListOf(Choice("control", lambda: CONTROLS), nonempty=False, unique=True))
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2 (each seed is kept in its own folder; adding seeds reuses the others)",
                           ListOf(Int(0), unique=True), hashed=False)


@dataclass(frozen=True)
class LotterySpec:
    experiment: ClassVar[str] = "lottery"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    lottery: LotteryOptions = field(default_factory=LotteryOptions)

    def validate(self) -> None:
        if self.lottery.retrain == "rewind" and self.lottery.retrain_steps is not None:
            raise UserError("--retrain-steps applies to --retrain finetune / lr-rewind; rewinding retrains from --rewind to the end")


# --------------------------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class Plan:
    """The experiment's iteration numbers, resolved against the data: T, k and the retraining windows."""

    total: int
    rewind: int
    retrain: int

    @classmethod
    def of(cls, spec: LotterySpec, setup: Setup) -> "Plan":
        lo = spec.lottery
        total, rewind = setup.total_steps, setup.step(lo.rewind)
        if rewind >= total:
            raise UserError(f"--rewind {lo.rewind} ({rewind} iterations) is not before the end of training "
                            f"(--steps {spec.train.steps} = {total} iterations)")
        retrain = setup.step(lo.retrain_steps) if lo.retrain_steps else total - rewind
        if lo.retrain_steps and retrain <= 0:
            raise UserError(f"--retrain-steps {lo.retrain_steps}: must be at least one iteration")
        if lo.retrain == "lr-rewind" and retrain > total:
            raise UserError(f"--retrain-steps {lo.retrain_steps} ({retrain} iterations) is longer than the schedule "
                            f"(--steps {spec.train.steps} = {total} iterations) that lr-rewind replays")
        return cls(total, rewind, retrain)


# ----------------------------------------------------------------------------------------------- units
class Lottery:
    """The units of one lottery experiment. Built (and so validated) before the run folder is opened;
    `run` and `bars` are attached afterwards."""

    def __init__(self, spec: LotterySpec, setup: Setup):
        self.spec, self.setup = spec, setup
        self.run: Run | None = None
        self.bars: Bars | None = None
        self._rewind_points: dict[int, tuple[dict, dict]] = {}
        self.plan = Plan.of(spec, setup)
        probe = setup.new_model_like()
        self.prunable = models.prunable_names(probe)
        self.output = models.output_name(probe)
        p = spec.prune
        self.fractions = layer_fractions(self.prunable, self.output, p.prune_fraction, p.output_prune_fraction,
                                         p.layer_prune_fractions)

    def arms(self, level: int) -> list[str]:
        return ["ticket"] + (list(self.spec.lottery.controls) if level > 0 else [])

    def unit(self, seed: int, level: int, arm: str) -> Unit:
        return self.run.unit(f"seed-{seed}", f"level-{level:02d}", arm)

    def window(self, level: int, arm: str) -> tuple[int, int, Schedule]:
        """The iterations an arm trains and the schedule it follows."""
        mode, plan, sched = self.spec.lottery.retrain, self.plan, self.setup.schedule
        if level == 0 or arm != "ticket" or mode == "rewind":
            return plan.rewind, plan.total, sched
        if mode == "finetune":
            return plan.total, plan.total + plan.retrain, sched.constant_at(plan.total - 1)
        return plan.total - plan.retrain, plan.total, sched

    # --------------------------------------------------------------------------------- rewind point
    def rewind_point(self, seed: int) -> tuple[dict, dict]:
        """(w_0, w_k): the init and the weights at the rewind step, trained once and shared by all levels."""
        if seed not in self._rewind_points:
            self._rewind_points[seed] = self._make_rewind_point(seed)
        return self._rewind_points[seed]

    def _make_rewind_point(self, seed: int) -> tuple[dict, dict]:
        unit = self.run.unit(f"seed-{seed}", "pretrain")
        if unit.is_done():
            try:
                init = unit.read("init.safetensors")
                return init, (unit.read("rewind.safetensors") if self.plan.rewind else init)
            except CorruptFile:
                pass
        model = self.setup.build_model(seed)
        init = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        files = {"init.safetensors": init}
        if self.plan.rewind:
            task = self.bars.add(f"seed {seed} pretrain to {self.spec.lottery.rewind}", self.plan.rewind)
            result = fit(model, self.setup.data, self.spec.train, seed=seed, start=0, end=self.plan.rewind,
                         schedule=self.setup.schedule, checkpoints=self._checkpoints(unit),
                         progress=lambda n: self.bars.set(task, n))
            files["rewind.safetensors"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            files["metrics.jsonl"] = result.metrics
        unit.commit(files)
        return init, files.get("rewind.safetensors", init)

    def _checkpoints(self, unit: Unit) -> Checkpoints:
        every = self.spec.train.checkpoint_every
        return Checkpoints(unit, self.setup.step(every))

    # ------------------------------------------------------------------------------------------ masks
    def ticket_mask(self, seed: int, level: int, rewind_weights: dict) -> Mask:
        if level == 0:
            return Mask({n: torch.ones_like(rewind_weights[n], dtype=torch.bool) for n in self.prunable}, self.prunable)
        previous = self.unit(seed, level - 1, "ticket")
        prev_mask = Mask(previous.read("mask.safetensors"), self.prunable)
        final = previous.read("final.safetensors")
        p = self.spec.prune
        scores = score(p.criterion, rewind_weights, final, self.prunable, seeding.generator("criterion", seed, level))
        return prune(scores, prev_mask, self.fractions, scope=p.prune_scope, global_fraction=p.prune_fraction,
                     level=level, generator=seeding.generator("ties", seed, level))

    def start_weights(self, seed: int, level: int, arm: str, rewind_weights: dict) -> tuple[Mask, dict]:
        if arm == "ticket":
            mask = self.ticket_mask(seed, level, rewind_weights)
            if level > 0 and self.spec.lottery.retrain != "rewind":
                return mask, mask.applied(self.unit(seed, level - 1, "ticket").read("final.safetensors"))
            return mask, mask.applied(rewind_weights)
        mask = Mask(self.unit(seed, level, "ticket").read("mask.safetensors"), self.prunable)
        if arm == "random_reinit":
            fresh = self.setup.build_model(seeding.derive_seed("random_reinit", seed, level))
            return mask, mask.applied({k: v.detach().cpu() for k, v in fresh.state_dict().items()})
        if arm == "random_prune":
            mask = random_mask_like(mask, seeding.generator("random_prune", seed, level))
            return mask, mask.applied(rewind_weights)
        if arm == "reshuffle":
            g = seeding.generator("reshuffle", seed, level)
            weights = dict(rewind_weights)
            for n in self.prunable:
                w, m = weights[n].clone().flatten(), mask[n].flatten()
                kept = m.nonzero().squeeze(1)
                w[kept] = w[kept[torch.randperm(len(kept), generator=g)]]
                weights[n] = w.view_as(weights[n])
            return mask, mask.applied(weights)
        raise UserError(f"unknown arm {arm!r}; valid: ticket, {', '.join(CONTROLS)}")

    # ------------------------------------------------------------------------------------------ train
    def train_unit(self, seed: int, level: int, arm: str, level_task: int) -> dict:
        unit = self.unit(seed, level, arm)
        start, end, schedule = self.window(level, arm)
        if unit.is_done():
            try:
                result = unit.read("result.json")
                self.bars.advance(level_task, end - start)
                return result
            except CorruptFile:
                pass
        _, rewind_weights = self.rewind_point(seed)
        mask, weights = self.start_weights(seed, level, arm, rewind_weights)
        model = self.setup.new_model_like()
        model.load_state_dict(weights)
        began = time.perf_counter()
        task = self.bars.add(f"  seed {seed} {arm}", end - start)
        done = [0]

        def progress(n: int) -> None:
            self.bars.set(task, n)
            self.bars.advance(level_task, n - done[0])
            done[0] = n

        fitted = fit(model, self.setup.data, self.spec.train, seed=seed, start=start, end=end, schedule=schedule,
                     mask=mask, checkpoints=self._checkpoints(unit), progress=progress)
        self.bars.progress.remove_task(task)
        final = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        result = {"level": level, "weights_remaining": mask.density(), "arm": arm, "seed": seed,
                  **fitted.summary(), "seconds": round(time.perf_counter() - began, 3)}
        unit.commit({"mask.safetensors": mask.to_tensors(), "start.safetensors": weights,
                     "final.safetensors": final, "metrics.jsonl": fitted.metrics,
                     "sparsity.json": mask.report(), "result.json": result})
        unit.clear_checkpoint()
        return result


# ------------------------------------------------------------------------------------------------- run
COLUMNS = ("level", "weights_remaining", "arm", "seed", "test_accuracy", "best_accuracy", "early_stop_step",
           "early_stop_accuracy", "test_loss", "train_steps", "seconds")


def run(spec: LotterySpec, *, out: str = "runs", force: bool = False, progress: bool | None = None) -> Results:
    """Run (or resume) a lottery experiment; returns the tidy results and writes them into the run folder."""
    setup = Setup.prepare(spec)
    lottery = Lottery(spec, setup)  # bad input fails here, before the run folder exists
    run_folder = Run.open(out, spec, force=force)
    rows: list[dict] = []
    with Bars(progress) as bars:
        lottery.run, lottery.bars = run_folder, bars
        arms = ["ticket", *spec.lottery.controls]
        bars.print(f"run folder: {run_folder.path}")
        bars.print(header(arms))
        for level in range(spec.lottery.levels + 1):
            level_rows = []
            total = sum(lottery.window(level, a)[1] - lottery.window(level, a)[0]
                        for a in lottery.arms(level)) * len(spec.lottery.seeds)
            level_task = bars.add(f"level {level}/{spec.lottery.levels}", total)
            for seed in spec.lottery.seeds:
                for arm in lottery.arms(level):
                    level_rows.append({k: v for k, v in lottery.train_unit(seed, level, arm, level_task).items()})
            bars.progress.remove_task(level_task)
            rows += level_rows
            bars.print(format_row(level, level_rows, arms))
    results = Results([{k: r.get(k) for k in COLUMNS} for r in rows])
    write_outputs(run_folder, spec, results)
    return results


def header(arms: list[str]) -> str:
    return f"{'level':>5} {'remaining':>9}  " + "  ".join(f"{a:>15}" for a in arms)


def format_row(level: int, rows: list[dict], arms: list[str]) -> str:
    res = Results(rows)
    cells = []
    for arm in arms:
        s = res.summary(("arm",))
        s = [r for r in s if r["arm"] == arm]
        if not s:
            cells.append(f"{'-':>15}")
        else:
            m, sd, n = 100 * s[0]["mean"], 100 * s[0]["std"], s[0]["n"]
            cells.append(f"{m:>7.2f} ± {sd:4.2f}%" if n > 1 else f"{m:>14.2f}%")
    return f"{level:>5} {100 * rows[0]['weights_remaining']:>8.2f}%  " + "  ".join(cells)


def write_outputs(run_folder: Run, spec: LotterySpec, results: Results) -> None:
    summary = results.summary()
    dense = [r["mean"] for r in summary if r["level"] == 0 and r["arm"] == "ticket"]
    title = f"{spec.model.model} on {spec.data.dataset}: lottery ({spec.lottery.retrain}, rewind {spec.lottery.rewind})"
    run_folder.write("results.csv", results.rows)
    run_folder.write("results.json", results.rows)
    run_folder.write("summary.json", {"experiment": spec.experiment, "seeds": list(spec.lottery.seeds),
                                      "dense_accuracy": dense[0] if dense else None, "by_level_and_arm": summary})
    run_folder.write("accuracy.png", plots.accuracy_vs_sparsity(summary, title, dense[0] if dense else None))
