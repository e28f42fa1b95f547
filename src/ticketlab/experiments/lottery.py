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

import math
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
from ..spec import (Bool, Choice, DataSpec, Int, ListOf, ModelSpec, Optional, PruneSpec, Step, TrainSpec,
                    setting)
from ..store import Run, Unit
from ..io import CorruptFile
from ..train import Schedule
from ..train.fit import Checkpoints
from ..train.jobs import Job, run_jobs
from .common import Setup
from .lca import LCASettings, recorder, recorder_files
from .scheduler import Task, plan_parallelism, run_tasks
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
class LotteryLCA(LCASettings):
    """Loss Change Allocation while training every unit (Lan et al. 2019)."""

    lca: bool = setting(False, "record Loss Change Allocation while training every ticket and control (see `ticketlab lca`)", Bool())


@dataclass(frozen=True)
class LotterySpec:
    experiment: ClassVar[str] = "lottery"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    lottery: LotteryOptions = field(default_factory=LotteryOptions)
    lca: LotteryLCA = field(default_factory=LotteryLCA)

    def validate(self) -> None:
        self.lca.check()
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
    `run` is attached afterwards. Worker processes build their own (`make_executor`)."""

    def __init__(self, spec: LotterySpec, setup: Setup):
        self.spec, self.setup = spec, setup
        self.run: Run | None = None
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
        """(w_0, w_k): the init and the weights at the rewind step, trained once (the `pretrain` task) and
        shared by all levels. With k = 0 there is nothing to train and the init is saved here."""
        if seed not in self._rewind_points:
            unit = self.pretrain_unit(seed)
            if not unit.is_done():
                if self.plan.rewind:
                    self.execute([("pretrain", seed, -1)], stack=False)
                else:
                    model = self.setup.build_model(seed)
                    unit.commit({"init.safetensors": {k: v.detach().cpu() for k, v in model.state_dict().items()}})
            try:
                init = unit.read("init.safetensors")
                self._rewind_points[seed] = (init, unit.read("rewind.safetensors") if self.plan.rewind else init)
            except CorruptFile:
                unit.remove()
                return self.rewind_point(seed)
        return self._rewind_points[seed]

    def pretrain_unit(self, seed: int) -> Unit:
        return self.run.unit(f"seed-{seed}", "pretrain")

    def _checkpoints(self, unit: Unit) -> Checkpoints:
        return Checkpoints(unit, self.setup.step(self.spec.train.checkpoint_every))

    # ------------------------------------------------------------------------------------------ masks
    def ticket_mask(self, seed: int, level: int, rewind_weights: dict) -> Mask:
        if level == 0:
            return Mask({n: torch.ones_like(rewind_weights[n], dtype=torch.bool) for n in self.prunable}, self.prunable)
        previous = self.unit(seed, level - 1, "ticket")
        prev_mask = Mask(previous.read("mask.safetensors"), self.prunable)
        final = previous.read("final.safetensors")
        p = self.spec.prune
        scores = score(p.criterion, rewind_weights, final, self.prunable, seeding.generator("criterion", seed, level), prev_mask)
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
    def tasks(self) -> list[Task]:
        """The experiment as a task graph: per seed, the pretraining to k (if k > 0), the chain of tickets,
        and each level's controls (which need that level's ticket mask)."""
        out = []
        for seed in self.spec.lottery.seeds:
            pre = ("pretrain", seed, -1)
            if self.plan.rewind:
                out.append(Task(pre, (), ("pretrain",), self.plan.rewind))
            for level in range(self.spec.lottery.levels + 1):
                for arm in self.arms(level):
                    start, end, schedule = self.window(level, arm)
                    deps = ((pre,) if self.plan.rewind and level == 0 else ()) + \
                        ((("ticket", seed, level - 1),) if arm == "ticket" and level else ()) + \
                        ((("ticket", seed, level),) if arm != "ticket" else ())
                    out.append(Task((arm, seed, level), deps, (start, end, schedule), end - start))
        return out

    def unit_of(self, key) -> Unit:
        arm, seed, level = key
        return self.pretrain_unit(seed) if arm == "pretrain" else self.unit(seed, level, arm)

    def prepare(self, key) -> Job:
        arm, seed, level = key
        unit = self.unit_of(key)
        if arm == "pretrain":
            return Job(key, self.setup.build_model(seed), seed, 0, self.plan.rewind, self.setup.schedule,
                       None, self._checkpoints(unit))
        _, rewind_weights = self.rewind_point(seed)
        mask, weights = self.start_weights(seed, level, arm, rewind_weights)
        model = self.setup.new_model_like()
        model.load_state_dict(weights)
        start, end, schedule = self.window(level, arm)
        lca = recorder(self.spec.lca, self.setup, model, mask, unit) if self.spec.lca.lca else None
        return Job(key, model, seed, start, end, schedule, mask, self._checkpoints(unit), weights, lca)

    def finish(self, job: Job, fitted, seconds: float) -> dict:
        arm, seed, level = job.key
        unit = self.unit_of(job.key)
        final = {k: v.detach().cpu() for k, v in job.model.state_dict().items()}
        if arm == "pretrain":
            init = self.setup.build_model(seed).state_dict()
            unit.commit({"init.safetensors": {k: v.cpu() for k, v in init.items()}, "rewind.safetensors": final,
                         "metrics.jsonl": fitted.metrics})
            unit.clear_checkpoint()
            return {"pretrain": seed}
        result = {"level": level, "weights_remaining": job.mask.density(), "arm": arm, "seed": seed,
                  **fitted.summary(), "seconds": round(seconds, 3)}
        files = {"mask.safetensors": job.mask.to_tensors(), "start.safetensors": job.start_weights,
                 "final.safetensors": final, "metrics.jsonl": fitted.metrics, "sparsity.json": job.mask.report()}
        if job.callbacks is not None:
            job.callbacks.flush()
            files.update(recorder_files(job.callbacks))
            summary = files["lca_summary.json"]
            result.update(lca_relative_error=summary.get("relative_error"), lca_fraction_helped=summary.get("fraction_helped"))
        # streamed per-parameter LCA lives in the unit's parameters/ folder: keep it
        unit.commit({**files, "result.json": result}, clear=not self.spec.lca.lca_parameter_chunk)
        unit.clear_checkpoint()
        return result

    def execute(self, keys: list, *, stack: bool, max_batch: int = 0, progress=None) -> dict:
        """Train the units `keys` (finished ones are read back); {key: result row}."""
        results, jobs = {}, []
        for key in keys:
            unit = self.unit_of(key)
            if unit.is_done():
                try:
                    results[key] = unit.read("result.json") if key[0] != "pretrain" else {"pretrain": key[1]}
                    continue
                except CorruptFile:
                    pass
            jobs.append(self.prepare(key))
        began = time.perf_counter()
        fitted = run_jobs(jobs, self.setup.data, self.spec.train, stack=stack, max_batch=max_batch, progress=progress)
        seconds = (time.perf_counter() - began) / max(len(jobs), 1)
        for job, f in zip(jobs, fitted):
            results[job.key] = self.finish(job, f, seconds)
        return results


def make_executor(spec: LotterySpec, out: str) -> Lottery:
    """A worker process's view of the experiment (the run folder exists already)."""
    lottery = Lottery(spec, Setup.prepare(spec))
    lottery.run = Run.open(out, spec)
    return lottery


# ------------------------------------------------------------------------------------------------- run
COLUMNS = ("level", "weights_remaining", "arm", "seed", "test_accuracy", "best_accuracy", "early_stop_step",
           "early_stop_accuracy", "test_loss", "train_steps", "seconds")


def run(spec: LotterySpec, *, out: str = "runs", force: bool = False, progress: bool | None = None) -> Results:
    """Run (or resume) a lottery experiment; returns the tidy results and writes them into the run folder."""
    setup = Setup.prepare(spec)
    lottery = Lottery(spec, setup)  # bad input fails here, before the run folder exists
    tasks = lottery.tasks()
    lo, t = spec.lottery, spec.train
    parallel = plan_parallelism(setup.new_model_like(), setup.device, width=len(lo.seeds) * (1 + len(lo.controls)),
                                total_steps=sum(task.cost for task in tasks), batch_size=t.batch_size,
                                input_numel=math.prod(setup.data.input_shape), workers=t.workers,
                                max_batch=1 if spec.lca.lca else t.max_batch)  # LCA watches one model at a time
    run_folder = Run.open(out, spec, force=force)
    lottery.run = run_folder
    arms = ["ticket", *lo.controls]
    rows: dict = {}
    expected = {lv: [k.key for k in tasks if k.key[2] == lv] for lv in range(lo.levels + 1)}
    printed = [0]
    with Bars(progress) as bars:
        overall = bars.add(f"lottery, {len(lo.seeds)} seed(s)", sum(task.cost for task in tasks))
        bars.print(f"run folder: {run_folder.path}")
        bars.print(parallel.describe())
        bars.print(header(arms))
        cost = {task.key: task.cost for task in tasks}
        level_cost = {lv: sum(cost[k] for k in keys) for lv, keys in expected.items()}
        level_bars: dict = {}
        running: dict = {}

        def on_start(key):
            level = key[2]
            if level >= 0 and level not in level_bars:
                level_bars[level] = bars.add(f"level {level}/{lo.levels}", level_cost[level])
            running[key] = [bars.add(f"  {key[0]} seed {key[1]}" + (f" level {level}" if level >= 0 else ""), cost[key]), 0]

        def advance(key, amount):
            bars.advance(overall, amount)
            if key[2] in level_bars:
                bars.advance(level_bars[key[2]], amount)

        def on_progress(key, n):
            if key in running:
                bar, before = running[key]
                bars.set(bar, n)
                advance(key, n - before)
                running[key][1] = n

        def on_done(key, row):
            bar, before = running.pop(key, [None, 0])
            if bar is not None:
                bars.progress.remove_task(bar)
            if key[2] >= 0 and key[2] not in level_bars:  # finished earlier: no bar was needed
                level_bars[key[2]] = bars.add(f"level {key[2]}/{lo.levels}", level_cost[key[2]])
            advance(key, cost[key] - before)
            if key[0] != "pretrain":
                rows[key] = row
            while printed[0] <= lo.levels and all(k in rows for k in expected[printed[0]]):
                level = printed[0]
                bars.print(format_row(level, [rows[k] for k in expected[level]], arms))
                if level in level_bars:
                    bars.progress.remove_task(level_bars[level])
                printed[0] += 1

        run_tasks(tasks, factory=make_executor, spec=spec, out=str(out), parallel=parallel, local_executor=lottery,
                  on_start=on_start, on_progress=on_progress, on_done=on_done)
    ordered = [rows[k] for lv in range(lo.levels + 1) for k in expected[lv]]
    ordered.sort(key=lambda r: (r["level"], lo.seeds.index(r["seed"]), arms.index(r["arm"])))
    columns = COLUMNS + (("lca_relative_error", "lca_fraction_helped") if spec.lca.lca else ())
    results = Results([{k: r.get(k) for k in columns} for r in ordered])
    write_outputs(run_folder, spec, results)
    return results


def table(rows: list[dict]) -> list[str]:
    """The terminal table of a lottery run: one line per level, mean ± std per arm."""
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    lines = [header(arms)]
    for level in sorted({r["level"] for r in rows}):
        lines.append(format_row(level, [r for r in rows if r["level"] == level], arms))
    return lines


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
