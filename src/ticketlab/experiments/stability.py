"""`ticketlab stability`: linear mode connectivity (Frankle, Dziugaite, Roy & Carbin 2020).

For each step k of `--copy-steps`: the network at step k is copied, the two copies are trained to the end
with different data orders (and dropout streams), and the test error is measured at `--interpolation-points`
evenly spaced points of the straight line between them (`ticketlab.instruments.interpolation`). The error
barrier is the maximum over the path minus the mean of the two ends. Level 0 is the dense network, trained
from its seeded init to k; a level L > 0 is the IMP ticket of that level with rewinding to k, taken from a
`ticketlab lottery` run of the same settings (run, or resumed, in the same `--out`): its copies start from
w_k times the ticket's mask and keep the mask.

Units: `seed-<s>/parent` (w_k of the dense network at every k), `seed-<s>/level-<LL>/k-<k>/copy-<c>` (one
trained copy, checkpointed) and `.../k-<k>` (the path). `results.csv` has one row per seed, level and k
(`error_barrier`, `test_accuracy` = mean of the ends); `interpolation.csv` one row per point of each path.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .. import models, seeding
from ..errors import UserError
from ..instruments.interpolation import error_along_path, error_barrier
from ..io import CorruptFile
from ..report import plots
from ..report.progress import Bars
from ..results import Results
from ..sparse import Mask
from ..spec import DataSpec, Int, ListOf, ModelSpec, PruneSpec, Step, TrainSpec, flat_values, from_mapping, setting
from ..store import Run
from ..train import fit
from ..train.fit import Checkpoints
from . import lottery
from .common import Setup


@dataclass(frozen=True)
class StabilityOptions:
    """Where the copies are made, which networks, and how finely the path is measured."""

    copy_steps: tuple = setting(("0it",), "steps k where the network is copied (and the tickets' rewind point), e.g. 0it,50it,1ep",
                                ListOf(Step(), unique=True))
    ticket_levels: tuple = setting((0,), "0: the dense network; L > 0: the IMP ticket of level L rewound to k (from a lottery run), e.g. 0,3",
                                   ListOf(Int(0), unique=True))
    interpolation_points: int = setting(30, "points on the straight path between the two copies, ends included", Int(2))
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2 (each seed is kept in its own folder)", ListOf(Int(0), unique=True), hashed=False)


@dataclass(frozen=True)
class StabilitySpec:
    experiment: ClassVar[str] = "stability"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    stability: StabilityOptions = field(default_factory=StabilityOptions)


def lottery_spec(spec: StabilitySpec, k: str, levels: int) -> lottery.LotterySpec:
    """The lottery experiment that yields the tickets at rewind point k: same data, model, training, pruning."""
    values = {name: value for name, value in flat_values(spec).items()
              if name not in {s for s in ("copy_steps", "ticket_levels", "interpolation_points")}}
    return from_mapping(lottery.LotterySpec, {**values, "rewind": k, "levels": levels, "controls": ()}, "stability")


class Stability:
    def __init__(self, spec: StabilitySpec, setup: Setup):
        self.spec, self.setup = spec, setup
        self.total = setup.total_steps
        self.ks: dict[str, int] = {}
        for text in spec.stability.copy_steps:
            k = setup.step(text)
            if k >= self.total:
                raise UserError(f"--copy-steps {text} ({k} iterations) is not before the end of training "
                                f"(--steps {spec.train.steps} = {self.total} iterations)")
            if k in self.ks.values():
                raise UserError(f"--copy-steps: {text} is the same step as another entry ({k} iterations)")
            self.ks[text] = k
        self.levels = sorted(spec.stability.ticket_levels)
        self.prunable = models.prunable_names(setup.new_model_like())
        self.lotteries = {text: lottery_spec(spec, text, max(self.levels)) for text in self.ks} if max(self.levels) else {}
        self.run: Run | None = None

    # ------------------------------------------------------------------------------------- start points
    def parents(self, seed: int) -> dict[int, dict]:
        """w_k of the dense network for every k (one training run to the largest k)."""
        unit = self.run.unit(f"seed-{seed}", "parent")
        names = {k: f"w-{k}.safetensors" for k in self.ks.values()}
        if unit.is_done():
            try:
                return {k: unit.read(n) for k, n in names.items()}
            except CorruptFile:
                pass
        model = self.setup.build_model(seed)
        states = {}

        def capture(step, m):
            if step in names:
                states[step] = {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}

        capture(0, model)
        last = max(self.ks.values())
        if last:
            fit(model, self.setup.data, self.spec.train, seed=seed, start=0, end=last, schedule=self.setup.schedule,
                on_step=capture)
        unit.commit({names[k]: states[k] for k in names})
        return states

    def ticket(self, seed: int, level: int, k_text: str, parent: dict) -> tuple[Mask | None, dict]:
        if level == 0:
            return None, parent
        lrun = Run(self.lottery_folder(k_text), self.lotteries[k_text])
        tickets = lrun.unit(f"seed-{seed}", f"level-{level:02d}", "ticket")
        mask = Mask(tickets.read("mask.safetensors"), self.prunable)
        return mask, tickets.read("start.safetensors")

    def lottery_folder(self, k_text: str):
        from ..spec import spec_hash
        return self.run.path.parent / f"lottery-{spec_hash(self.lotteries[k_text])}"

    # ------------------------------------------------------------------------------------------ copies
    def copy(self, seed: int, level: int, k: int, c: int, mask: Mask | None, start: dict) -> dict:
        unit = self.run.unit(f"seed-{seed}", f"level-{level:02d}", f"k-{k}", f"copy-{c}")
        if unit.is_done():
            try:
                return unit.read("final.safetensors")
            except CorruptFile:
                pass
        model = self.setup.new_model_like()
        model.load_state_dict(start)
        order_seed = seeding.derive_seed("stability/copy", seed, level, k, c)
        fitted = fit(model, self.setup.data, self.spec.train, seed=order_seed, start=k, end=self.total,
                     schedule=self.setup.schedule, mask=mask,
                     checkpoints=Checkpoints(unit, self.setup.step(self.spec.train.checkpoint_every)))
        final = {n: v.detach().cpu() for n, v in model.state_dict().items()}
        unit.commit({"final.safetensors": final, "metrics.jsonl": fitted.metrics, "result.json": fitted.summary()})
        return final

    def path(self, seed: int, level: int, k_text: str, parent: dict) -> dict:
        k = self.ks[k_text]
        unit = self.run.unit(f"seed-{seed}", f"level-{level:02d}", f"k-{k}")
        if unit.is_done():
            try:
                return unit.read("result.json")
            except CorruptFile:
                pass
        mask, start = self.ticket(seed, level, k_text, parent)
        a, b = (self.copy(seed, level, k, c, mask, start) for c in (0, 1))
        d = self.setup.data
        rows = error_along_path(self.setup.new_model_like(), a, b, d.test_x, d.test_y,
                                self.spec.stability.interpolation_points, self.spec.train.eval_batch_size)
        errors = [r["test_error"] for r in rows]
        result = {"seed": seed, "level": level, "weights_remaining": mask.density() if mask else 1.0,
                  "copy_step": k, "error_barrier": error_barrier(errors),
                  "test_accuracy": 1.0 - 0.5 * (errors[0] + errors[-1]),
                  "copy_0_accuracy": rows[0]["test_accuracy"], "copy_1_accuracy": rows[-1]["test_accuracy"],
                  "path": rows}
        unit.commit({"result.json": result, "interpolation.csv": rows}, clear=False)   # keeps the copies below it
        return result


# ------------------------------------------------------------------------------------------------- run
COLUMNS = ("seed", "level", "weights_remaining", "copy_step", "error_barrier", "test_accuracy", "copy_0_accuracy",
           "copy_1_accuracy")


def run(spec: StabilitySpec, *, out: str = "runs", force: bool = False, progress: bool | None = None) -> Results:
    setup = Setup.prepare(spec)
    stab = Stability(spec, setup)   # bad input fails here, before any folder exists
    for lspec in stab.lotteries.values():
        lottery.Lottery(lspec, setup)
    for k_text, lspec in stab.lotteries.items():   # the tickets: the lottery experiment, in its own run folder
        lottery.run(lspec, out=out, force=False, progress=progress)
    stab.run = run_folder = Run.open(out, spec, force=force)
    results = []
    with Bars(progress) as bars:
        bars.print(f"run folder: {run_folder.path}")
        for seed in spec.stability.seeds:
            parents = stab.parents(seed)
            for level in stab.levels:
                for k_text, k in stab.ks.items():
                    r = stab.path(seed, level, k_text, parents[k])
                    results.append(r)
                    bars.print(f"seed {seed} level {level} ({100 * r['weights_remaining']:.1f}% weights) k={k_text}: "
                               f"error barrier {100 * r['error_barrier']:.2f}%, ends {100 * r['copy_0_accuracy']:.2f}% / "
                               f"{100 * r['copy_1_accuracy']:.2f}%")
    table = Results([{c: r[c] for c in COLUMNS} for r in results])
    path_rows = [{"seed": r["seed"], "level": r["level"], "copy_step": r["copy_step"], **p} for r in results for p in r["path"]]
    run_folder.write("results.csv", table.rows)
    run_folder.write("results.json", table.rows)
    run_folder.write("interpolation.csv", path_rows)
    barriers = table.summary(("level", "copy_step"), "error_barrier")
    run_folder.write("summary.json", {"experiment": spec.experiment, "seeds": list(spec.stability.seeds),
                                      "error_barrier_by_level_and_k": barriers,
                                      "test_accuracy_by_level_and_k": table.summary(("level", "copy_step"))})
    title = f"{spec.model.model} on {spec.data.dataset}"
    first = spec.stability.seeds[0]
    curves = {f"level {r['level']}, k={r['copy_step']}": ([p["alpha"] for p in r["path"]], [p["test_error"] for p in r["path"]])
              for r in results if r["seed"] == first}
    run_folder.write("interpolation.png", plots.interpolation_error(curves, f"{title}: error along the path (seed {first})"))
    series = {}
    for level in stab.levels:
        rows = sorted((b for b in barriers if b["level"] == level), key=lambda b: b["copy_step"])
        series["dense" if level == 0 else f"ticket level {level}"] = ([b["copy_step"] for b in rows], [b["mean"] for b in rows])
    run_folder.write("barrier.png", plots.barrier_vs_rewind(series, f"{title}: instability"))
    return table
