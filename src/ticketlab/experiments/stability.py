"""`ticketlab stability`: linear mode connectivity (Frankle, Dziugaite, Roy & Carbin 2020).

For each step k of `--copy-steps`: the network at step k is copied, the two copies are trained to the end
with different data orders (and dropout streams), and the test error is measured at `--interpolation-points`
evenly spaced points of the straight line between them (`ticketlab.instruments.interpolation`). The error
barrier is the maximum over the path minus the mean of the two ends. Level 0 is the dense network, trained
from its seeded init to k; a level L > 0 is the IMP ticket of that level with rewinding to k, taken from a
`ticketlab lottery` run of the same settings (run, or resumed, in the same `--out`): its copies start from
w_k times the ticket's mask and keep the mask.

Units (`Stability`): `seed-<s>/parent` (w_k of the dense network at every k), `seed-<s>/level-<LL>/k-<k>/copy-<c>`
(one trained copy, checkpointed) and `.../k-<k>` (the path). The lottery runs are child experiments: their
units run in the same task graph (a ticket's copies wait only for that ticket) and their folders get their
own reports. `results.csv` has one row per seed, level and k (`error_barrier`, `test_accuracy` = mean of the
ends); `interpolation.csv` one row per point of each path.
"""

from __future__ import annotations



from .. import models, seeding
from ..errors import UserError
from ..instruments.interpolation import error_along_path, error_barrier
from ..report import plots
from ..results import Results, diverged_columns, is_diverged
from ..sparse import Mask
from ..spec import flat_values, from_mapping
from ..store import Run, Unit
from ..train.callbacks import Snapshot
from ..train.fit import Checkpoints
from ..train.jobs import Job
from ..run import Experiment, Report, Work, runner
from . import lottery
from .common import Setup


from ..specs.stability import StabilityOptions, StabilitySpec  # noqa: F401 (torch-free, for the CLI)


def lottery_spec(spec: StabilitySpec, k: str, levels: int) -> lottery.LotterySpec:
    """The lottery experiment that yields the tickets at rewind point k: same data, model, training, pruning."""
    values = {name: value for name, value in flat_values(spec).items()
              if name not in {s for s in ("copy_steps", "ticket_levels", "interpolation_points")}}
    return from_mapping(lottery.LotterySpec, {**values, "rewind": k, "levels": levels, "controls": ()}, "stability")


class Stability(Experiment):
    """Per seed: the dense parent (`("parent", s)`: one training to the largest k, capturing w_k at every k;
    only with level 0),
    and for every level and k the two copies (`("copy", s, level, k, c)`, trained on [k, T)) and the path
    between their ends (`("path", s, level, k)`). A ticket level's copies start from the level's ticket of
    the lottery experiment rewound to k (a child experiment, one per k, in its own run folder), not from the
    parent. Seeds, levels and k are independent of each other."""

    name = "stability"
    metrics = ("error_barrier", "test_accuracy")

    def __init__(self, spec: StabilitySpec, setup: Setup):
        super().__init__(spec, setup)
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
        probe = setup.new_model_like()
        self.prunable = models.prunable_names(probe)
        if max(self.levels):   # before the lottery experiments are made (their folders come later)
            lottery.check_levels(max(self.levels), "--ticket-levels", probe, spec.prune)
        # the tickets: a lottery experiment per k (rewind point k), in its own run folder of the same --out
        self.lotteries = {k: lottery.Lottery(lottery_spec(spec, text, max(self.levels)), setup)
                          for text, k in self.ks.items()} if max(self.levels) else {}

    def children(self) -> list[Experiment]:
        return list(self.lotteries.values())

    def attach(self, run: Run, out: str) -> None:
        super().attach(run, out)
        for child in self.lotteries.values():   # in a worker process, the runner attached only this one
            if child.run is None:
                child.attach(Run.open(out, child.spec), out)

    # ------------------------------------------------------------------------------------------ units
    def units(self) -> list[Work]:
        out, last = [], max(self.ks.values())
        for seed in self.spec.stability.seeds:
            parent = ("parent", seed)
            if 0 in self.levels:   # the dense copies' start points (the tickets bring their own w_k)
                out.append(Work(parent, (), None, max(last, 1), f"seed {seed} parent"))
            for level in self.levels:
                for k in self.ks.values():
                    start = parent if level == 0 else (self.lotteries[k], ("ticket", seed, level))
                    copies = [("copy", seed, level, k, c) for c in (0, 1)]
                    out += [Work(key, (start,), (k, self.total), self.total - k, f"seed {seed} level {level} k={k} copy {key[-1]}")
                            for key in copies]
                    out.append(Work(("path", seed, level, k), tuple(copies)))
        return out

    def unit_of(self, key) -> Unit:
        kind, seed, *rest = key
        if kind == "parent":
            return self.run.unit(f"seed-{seed}", "parent")
        level, k, *c = rest
        path = self.run.unit(f"seed-{seed}", f"level-{level:02d}", f"k-{k}")
        return path.unit(f"copy-{c[0]}") if kind == "copy" else path

    def ticket(self, seed: int, level: int, k: int) -> Unit:
        """The lottery run's ticket of a level rewound to k (its mask, and w_k x mask to start from)."""
        return self.lotteries[k].unit(seed, level, "ticket")

    def mask(self, seed: int, level: int, k: int) -> Mask | None:
        return Mask(self.ticket(seed, level, k).read("mask.safetensors"), self.prunable) if level else None

    def start(self, seed: int, level: int, k: int) -> dict:
        """Where a level's copies start: w_k of the dense parent, or the ticket's w_k x mask."""
        if level == 0:
            return self.unit_of(("parent", seed)).read(f"w-{k}.safetensors")
        return self.ticket(seed, level, k).read("start.safetensors")

    def prepare(self, key):
        kind, seed, *rest = key
        setup = self.setup
        checkpoints = Checkpoints(self.unit_of(key), setup.step(self.spec.train.checkpoint_every))
        if kind == "parent":
            model = setup.build_model(seed)
            last = max(self.ks.values())
            if not last:
                return {"w-0.safetensors": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                        "result.json": {"seed": seed, "train_steps": 0}}
            return Job(key, model, seed, 0, last, setup.schedule, None, checkpoints, callbacks=[Snapshot(self.ks.values())])
        if kind == "copy":
            level, k, c = rest
            model = setup.new_model_like()
            model.load_state_dict(self.start(seed, level, k))
            order_seed = seeding.derive_seed("stability/copy", seed, level, k, c)   # data order and dropout
            return Job(key, model, order_seed, k, self.total, setup.schedule, self.mask(seed, level, k), checkpoints)
        level, k = rest
        return self.path(seed, level, k)

    def finish(self, key, job: Job, fitted, seconds: float) -> dict:
        if key[0] == "parent":
            (snapshot,) = job.callbacks
            return {**{f"w-{k}.safetensors": snapshot.weights[k] for k in self.ks.values()},
                    "metrics.jsonl": fitted.metrics, "result.json": {"seed": key[1], "train_steps": fitted.steps}}
        final = {n: v.detach().cpu() for n, v in job.model.state_dict().items()}
        return {"final.safetensors": final, "metrics.jsonl": fitted.metrics, "result.json": fitted.summary()}

    def describe(self, key, job=None) -> dict:
        kind, seed, *rest = key
        if kind != "path":
            return {"seed": seed}
        level, k = rest
        return {"seed": seed, "level": level, "weights_remaining": None, "copy_step": k, "path": []}

    def path(self, seed: int, level: int, k: int) -> dict:
        """The files of a path: test error along the straight line between the two copies' final weights."""
        a, b = (self.unit_of(("copy", seed, level, k, c)).read("final.safetensors") for c in (0, 1))
        mask = self.mask(seed, level, k)
        d = self.setup.data
        rows = error_along_path(self.setup.new_model_like(), a, b, d.test_x, d.test_y,
                                self.spec.stability.interpolation_points, self.spec.train.eval_batch_size)
        errors = [r["test_error"] for r in rows]
        result = {"seed": seed, "level": level, "weights_remaining": mask.density() if mask else 1.0,
                  "copy_step": k, "error_barrier": error_barrier(errors),
                  "test_accuracy": 1.0 - 0.5 * (errors[0] + errors[-1]),
                  "copy_0_accuracy": rows[0]["test_accuracy"], "copy_1_accuracy": rows[-1]["test_accuracy"],
                  "path": rows}
        return {"result.json": result, "interpolation.csv": rows}   # the copies' units below it stay

    # ----------------------------------------------------------------------------------------- report
    def progress_lines(self, key, result: dict, done: dict) -> list[str]:
        if key[0] != "path":
            return []
        _, seed, level, k = key
        text = next(t for t, v in self.ks.items() if v == k)
        r = result
        if is_diverged(r):
            return [f"seed {seed} level {level} k={text}: diverged ({r.get('diverged_reason')})"]
        return [f"seed {seed} level {level} ({100 * r['weights_remaining']:.1f}% weights) k={text}: "
                f"error barrier {100 * r['error_barrier']:.2f}%, ends {100 * r['copy_0_accuracy']:.2f}% / "
                f"{100 * r['copy_1_accuracy']:.2f}%"]

    def report(self, results: dict) -> Report:
        spec = self.spec
        paths = [results[("path", seed, level, k)] for seed in spec.stability.seeds for level in self.levels
                 for k in self.ks.values()]
        table = Results([{**{c: r.get(c) for c in COLUMNS}, **diverged_columns(r)} for r in paths])
        path_rows = [{"seed": r["seed"], "level": r["level"], "copy_step": r["copy_step"], **p} for r in paths for p in r["path"]]
        dropped = sum(is_diverged(r) for r in paths)
        barriers = table.summary(("level", "copy_step"), "error_barrier")
        summary = {"experiment": spec.experiment, "seeds": list(spec.stability.seeds), "diverged": dropped,
                   "error_barrier_by_level_and_k": barriers,
                   "test_accuracy_by_level_and_k": table.summary(("level", "copy_step"))}
        title = f"{spec.model.model} on {spec.data.dataset}"
        first = spec.stability.seeds[0]
        curves = {f"level {r['level']}, k={r['copy_step']}": ([p["alpha"] for p in r["path"]], [p["test_error"] for p in r["path"]])
                  for r in paths if r["seed"] == first and not is_diverged(r)}
        series = {}
        for level in self.levels:
            rows = sorted((b for b in barriers if b["level"] == level and b["n"]), key=lambda b: b["copy_step"])
            lost = sum(b["diverged"] for b in barriers if b["level"] == level)
            label = ("dense" if level == 0 else f"ticket level {level}") + plots.diverged_note(lost)
            series[label] = ([b["copy_step"] for b in rows], [b["mean"] for b in rows])
        lost_first = sum(is_diverged(r) for r in paths if r["seed"] == first)
        return Report(table.rows, summary, {
            "interpolation.csv": path_rows,
            "interpolation.png": plots.interpolation_error(
                curves, f"{title}: error along the path (seed {first})" + plots.diverged_note(lost_first)),
            "barrier.png": plots.barrier_vs_rewind(series, f"{title}: instability")})


# ------------------------------------------------------------------------------------------------- run
COLUMNS = ("seed", "level", "weights_remaining", "copy_step", "error_barrier", "test_accuracy", "copy_0_accuracy",
           "copy_1_accuracy")


def run(spec: StabilitySpec, *, out: str = "runs", force: bool = False, progress: bool | None = None,
        wait: bool = False) -> Results:
    """Run (or resume) the stability experiment and the lottery runs its tickets come from; one row per
    seed, level and k."""
    return runner.run(Stability, spec, out=out, force=force, progress=progress, wait=wait)


EXPERIMENT = Stability   # what a sweep of this experiment runs
