"""Deconstructing lottery tickets (Zhou, Lan, Liu & Yosinski 2019): which masks, which starting values.

A grid of mask criteria x mask-1 actions x seeds on one architecture. Each (criterion, mask-1 action) cell
is an iterative-pruning chain built from the lottery experiment's units (`lottery.Lottery`): at level l the
criterion scores (w_i, w_f of level l-1) choose the mask (`prune_fraction` of the remaining weights per
level, ties random), the mask-1 action sets the kept weights' start values (`sparse.actions`), the mask-0
action the pruned ones (zero, or frozen at w_i through `Mask(fill=...)`), and the network is retrained on
[k, T). Level 0, the dense network, and the rewind point are shared by all cells.

Untrained supermasks (Zhou et al., Section 5): at every level, each cell's mask is also applied to the
untrained init, as is (`rewind`) or as the signed constant sign(w_i) * sigma_layer (`signed_constant`), and
evaluated without any training: rows with `phase = untrained` (`mask_one` then names those weights). The
masks are those of the first mask-1 action's chains (with `rewind`, Zhou et al.'s setting).

Every (cell, seed, level) is a unit of the store: resumable, verified, skipped when done. The units are a
task graph run like the lottery experiment's (`experiments/scheduler.py`): worker processes, and the
K-model engine inside each where it pays.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import ClassVar

from .. import seeding
from ..io import CorruptFile
from ..report import plots
from ..report.progress import Bars
from ..results import Results
from ..sparse import Mask
from ..sparse.actions import MASK_ONE_ACTIONS, MASK_ZERO_ACTIONS, mask_one, with_actions
from ..spec import (Bool, Choice, DataSpec, Int, ListOf, ModelSpec, PruneSpec, Step, TrainSpec, _criteria,
                    setting)
from ..store import Run, Unit
from ..train import evaluate
from ..train.jobs import run_jobs
from .common import Setup
from .lottery import Lottery, LotteryOptions, LotterySpec, format_row, header
from .scheduler import Task, plan_parallelism, run_tasks


@dataclass(frozen=True)
class DeconstructPruneSpec(PruneSpec):
    """How masks are chosen at each pruning level (one chain per criterion)."""

    criterion: tuple = setting(("large_final", "small_final", "random"),
                               "mask criteria compared, e.g. large_final,random (score; higher is kept)",
                               ListOf(Choice("criterion", _criteria), unique=True))


@dataclass(frozen=True)
class DeconstructOptions:
    """The grid: mask-1 / mask-0 actions, levels, untrained supermasks, seeds."""

    mask_one: tuple = setting(("rewind",), f"mask-1 actions (start values of kept weights): {', '.join(MASK_ONE_ACTIONS)}",
                              ListOf(Choice("mask-1 action", lambda: MASK_ONE_ACTIONS), unique=True))
    mask_zero: str = setting("zero", f"mask-0 action (value of pruned weights): {', '.join(MASK_ZERO_ACTIONS)}",
                             Choice("mask-0 action", lambda: MASK_ZERO_ACTIONS))
    rescale: bool = setting(False, "multiply the kept weights of each layer by numel / #kept (Zhou et al.'s *_rescaling)", Bool())
    levels: int = setting(10, "pruning levels after the dense network (level 0)", Int(0))
    rewind: str = setting("0it", "rewind point k: w_i is the weights at step k (0it = init); retraining replays [k, T)", Step())
    untrained: tuple = setting(("rewind", "signed_constant"),
                               "untrained-supermask evaluations per level: each cell's mask on the init as is (rewind) or "
                               "as sign(w_i) * sigma_layer (signed_constant); none: skip",
                               ListOf(Choice("untrained weights", lambda: ("rewind", "signed_constant")), nonempty=False, unique=True))
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2", ListOf(Int(0), unique=True), hashed=False)


@dataclass(frozen=True)
class DeconstructSpec:
    experiment: ClassVar[str] = "deconstruct"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    prune: DeconstructPruneSpec = field(default_factory=DeconstructPruneSpec)
    deconstruct: DeconstructOptions = field(default_factory=DeconstructOptions)

    def lottery_spec(self, criterion: str) -> LotterySpec:
        """The lottery experiment one criterion's chains are built from (rewinding, no controls)."""
        p, d = self.prune, self.deconstruct
        prune = PruneSpec(prune_fraction=p.prune_fraction, output_prune_fraction=p.output_prune_fraction,
                          layer_prune_fractions=p.layer_prune_fractions, prune_scope=p.prune_scope, criterion=criterion)
        return LotterySpec(data=self.data, model=self.model, train=self.train, prune=prune,
                           lottery=LotteryOptions(levels=d.levels, rewind=d.rewind, retrain="rewind", controls=(), seeds=d.seeds))


class Chain(Lottery):
    """One (criterion, mask-1 action) cell: the lottery units, with the actions applied to each level's
    start weights and the dense level and rewind point taken from the shared `base`."""

    def __init__(self, spec: DeconstructSpec, setup: Setup, criterion: str, action: str, base: Lottery | None):
        super().__init__(spec.lottery_spec(criterion), setup)
        self.criterion, self.action, self.base = criterion, action, base
        self.mask_zero, self.rescale = spec.deconstruct.mask_zero, spec.deconstruct.rescale

    def unit(self, seed: int, level: int, arm: str) -> Unit:
        if level == 0:
            return self.run.unit(f"seed-{seed}", "level-00", "dense")
        return self.run.unit(self.criterion, self.action, f"seed-{seed}", f"level-{level:02d}", arm)

    def rewind_point(self, seed: int) -> tuple[dict, dict]:
        return self.base.rewind_point(seed) if self.base is not None else super().rewind_point(seed)

    def start_weights(self, seed: int, level: int, arm: str, rewind_weights: dict) -> tuple[Mask, dict]:
        mask = self.ticket_mask(seed, level, rewind_weights)
        if level == 0:
            return mask, mask.applied(rewind_weights)
        final = self.unit(seed, level - 1, "ticket").read("final.safetensors")
        return with_actions(mask, rewind_weights, final, self.action, self.mask_zero,
                            seeding.generator("mask-1 action", seed, level), rescale=self.rescale)

    def untrained(self, seed: int, level: int, weights: str) -> dict:
        """The level's mask on the untrained init (`weights`: rewind or signed_constant), evaluated."""
        unit = self.unit(seed, level, f"untrained-{weights}")
        if unit.is_done():
            try:
                return unit.read("result.json")
            except CorruptFile:
                pass
        init, _ = self.rewind_point(seed)
        mask = Mask(self.unit(seed, level, "ticket").read("mask.safetensors"), self.prunable)
        start = mask_one(weights, init, mask, seeding.generator("untrained", seed, level))
        model = self.setup.new_model_like()
        model.load_state_dict(start)
        loss, acc = evaluate(model, self.setup.data.test_x, self.setup.data.test_y, self.spec.train.eval_batch_size)
        result = {"level": level, "weights_remaining": mask.density(), "test_accuracy": acc, "test_loss": loss}
        unit.commit({"result.json": result})
        return result


# ------------------------------------------------------------------------------------------------- run
COLUMNS = ("criterion", "mask_one", "mask_zero", "phase", "level", "weights_remaining", "seed", "test_accuracy",
           "best_accuracy", "early_stop_step", "early_stop_accuracy", "test_loss", "train_steps", "seconds")


class Grid:
    """Every cell of the grid as one executor (each worker process builds its own): tasks are keys
    (criterion, mask-1 action, seed, level), and ("dense", "none", seed, 0) for the shared dense network.
    Tasks of one level train together, stacked where the K-model engine pays (mask-0 fills included)."""

    def __init__(self, spec: DeconstructSpec, setup: Setup):
        d = spec.deconstruct
        self.spec, self.setup = spec, setup
        self.base = Chain(spec, setup, spec.prune.criterion[0], d.mask_one[0], None)  # bad input fails here
        self.chains = {(c, a): Chain(spec, setup, c, a, self.base) for a in d.mask_one for c in spec.prune.criterion}

    def attach(self, run_folder: Run) -> None:
        for chain in [self.base, *self.chains.values()]:
            chain.run = run_folder

    def chain(self, key) -> Chain:
        return self.base if key[3] == 0 else self.chains[(key[0], key[1])]

    def tasks(self) -> list[Task]:
        d, plan = self.spec.deconstruct, self.base.plan
        out = []
        for seed in d.seeds:
            dense = ("dense", "none", seed, 0)
            out.append(Task(dense, (), "train", plan.total - plan.rewind))
            for (criterion, action) in self.chains:
                for level in range(1, d.levels + 1):
                    before = dense if level == 1 else (criterion, action, seed, level - 1)
                    out.append(Task((criterion, action, seed, level), (before,), "train", plan.total - plan.rewind))
        return out

    def execute(self, keys: list, *, stack: bool, max_batch: int = 0, progress=None) -> dict:
        results, pending = {}, []
        for key in keys:
            chain, inner = self.chain(key), ("ticket", key[2], key[3])
            unit = chain.unit_of(inner)
            if unit.is_done():
                try:
                    results[key] = unit.read("result.json")
                    continue
                except CorruptFile:
                    pass
            job = chain.prepare(inner)
            job.key = key
            pending.append((chain, job))
        began = time.perf_counter()
        fitted = run_jobs([job for _, job in pending], self.setup.data, self.spec.train, stack=stack,
                          max_batch=max_batch, progress=progress)
        seconds = (time.perf_counter() - began) / max(len(pending), 1)
        for (chain, job), f in zip(pending, fitted):
            key, job.key = job.key, ("ticket", job.key[2], job.key[3])
            results[key] = chain.finish(job, f, seconds)
        return results


def make_executor(spec: DeconstructSpec, out: str) -> Grid:
    grid = Grid(spec, Setup.prepare(spec))
    grid.attach(Run.open(out, spec))
    return grid


def run(spec: DeconstructSpec, *, out: str = "runs", force: bool = False, progress: bool | None = None) -> Results:
    """Run (or resume) the deconstruct grid; returns tidy rows (`phase` trained / untrained)."""
    setup = Setup.prepare(spec)
    d = spec.deconstruct
    grid = Grid(spec, setup)
    tasks = grid.tasks()
    t = spec.train
    parallel = plan_parallelism(setup.new_model_like(), setup.device, width=len(d.seeds) * len(grid.chains),
                                total_steps=sum(task.cost for task in tasks), batch_size=t.batch_size,
                                input_numel=math.prod(setup.data.input_shape), workers=t.workers, max_batch=t.max_batch)
    run_folder = Run.open(out, spec, force=force)
    grid.attach(run_folder)
    criteria = list(spec.prune.criterion)
    by_level = {lv: [task.key for task in tasks if task.key[3] == lv] for lv in range(d.levels + 1)}
    trained: dict = {}
    rows: list[dict] = []
    printed = [0]
    with Bars(progress) as bars:
        bars.print(f"run folder: {run_folder.path}")
        bars.print(parallel.describe())
        overall = bars.add(f"deconstruct, {len(grid.chains)} cell(s) x {len(d.seeds)} seed(s)", sum(task.cost for task in tasks))
        seen: dict = {}

        def on_progress(key, n):
            bars.advance(overall, n - seen.get(key, 0))
            seen[key] = n

        def on_done(key, result):
            on_progress(key, grid.base.plan.total - grid.base.plan.rewind)
            trained[key] = result
            while printed[0] <= d.levels and all(k in trained for k in by_level[printed[0]]):
                level = printed[0]
                level_rows = []
                for k in by_level[level]:
                    criterion, action, seed, _ = k
                    level_rows.append(_row(trained[k], criterion, action, "none" if level == 0 else d.mask_zero, "trained"))
                    if level == 0 or action != d.mask_one[0]:
                        continue
                    for weights in d.untrained:
                        u = grid.chain(k).untrained(seed, level, weights)
                        level_rows.append(_row({**u, "seed": seed}, criterion, weights, "zero", "untrained"))
                rows.extend(level_rows)
                _print_level(bars, level, level_rows, criteria, d, first=level == 0)
                printed[0] += 1

        run_tasks(tasks, factory=make_executor, spec=spec, out=str(out), parallel=parallel, local_executor=grid,
                  on_progress=on_progress, on_done=on_done)
    results = Results([{k: r.get(k) for k in COLUMNS} for r in rows])
    write_outputs(run_folder, spec, results)
    return results


def _row(result: dict, criterion: str, action: str, mask_zero: str, phase: str) -> dict:
    return {**result, "criterion": criterion, "mask_one": action, "mask_zero": mask_zero, "phase": phase}


def _print_level(bars: Bars, level: int, rows: list[dict], criteria: list[str], d: DeconstructOptions, first: bool) -> None:
    if first:
        dense = [{**r, "arm": "dense"} for r in rows]
        bars.print(header(["dense"]))
        bars.print(format_row(0, dense, ["dense"]))
        return
    for action in d.mask_one:
        trained = [{**r, "arm": r["criterion"]} for r in rows if r["phase"] == "trained" and r["mask_one"] == action]
        bars.print(f"trained, mask-1 {action}, mask-0 {d.mask_zero}:")
        bars.print("  " + header(criteria))
        bars.print("  " + format_row(level, trained, criteria))
    for weights in d.untrained:
        untrained = [{**r, "arm": r["criterion"]} for r in rows if r["phase"] == "untrained" and r["mask_one"] == weights]
        if untrained:
            bars.print(f"untrained supermask ({weights} weights, masks of the mask-1 {d.mask_one[0]} chains):")
            bars.print("  " + format_row(level, untrained, criteria))


def write_outputs(run_folder: Run, spec: DeconstructSpec, results: Results) -> None:
    by = ("criterion", "mask_one", "mask_zero", "phase", "level")
    summary = results.summary(by)
    dense = [r["mean"] for r in summary if r["criterion"] == "dense"]
    dense = dense[0] if dense else None
    run_folder.write("results.csv", results.rows)
    run_folder.write("results.json", results.rows)
    run_folder.write("summary.json", {"experiment": spec.experiment, "seeds": list(spec.deconstruct.seeds),
                                      "dense_accuracy": dense, "by_cell_and_level": summary})
    name = f"{spec.model.model} on {spec.data.dataset}"
    for action in spec.deconstruct.mask_one:
        rows = [r for r in summary if r["phase"] == "trained" and r["mask_one"] == action and r["criterion"] != "dense"]
        title = f"{name}: mask-1 {action}, mask-0 {spec.deconstruct.mask_zero}" + (", rescaled" if spec.deconstruct.rescale else "")
        run_folder.write(f"accuracy-{action}.png", plots.accuracy_by_criterion(rows, title, dense))
    for weights in spec.deconstruct.untrained:
        rows = [r for r in summary if r["phase"] == "untrained" and r["mask_one"] == weights]
        if rows:
            run_folder.write(f"untrained-{weights}.png",
                             plots.accuracy_by_criterion(rows, f"{name}: untrained supermask ({weights} weights)", dense))


def table(rows: list[dict]) -> list[str]:
    """The lines `ticketlab show` can print for a deconstruct run: per phase and mask-1 action, a level x
    criterion table of mean ± std test accuracy."""
    rows = [{**r, "level": int(r["level"]), "weights_remaining": float(r["weights_remaining"]),
             "test_accuracy": float(r["test_accuracy"])} for r in rows]
    dense = [{**r, "arm": "dense"} for r in rows if r["criterion"] == "dense"]
    lines = [header(["dense"])] + ([format_row(0, dense, ["dense"])] if dense else [])
    criteria = list(dict.fromkeys(r["criterion"] for r in rows if r["criterion"] != "dense"))
    for phase in ("trained", "untrained"):
        for action in dict.fromkeys(r["mask_one"] for r in rows if r["phase"] == phase and r["criterion"] != "dense"):
            part = [{**r, "arm": r["criterion"]} for r in rows
                    if r["phase"] == phase and r["mask_one"] == action and r["criterion"] != "dense"]
            lines.append(f"{phase}, {'weights' if phase == 'untrained' else 'mask-1'} {action}:")
            lines.append("  " + header(criteria))
            for level in sorted({r["level"] for r in part}):
                lines.append("  " + format_row(level, [r for r in part if r["level"] == level], criteria))
    return lines
