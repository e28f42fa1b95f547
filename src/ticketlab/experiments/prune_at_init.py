"""Pruning at initialisation (SNIP, Lee et al. 2019; GraSP, Wang et al. 2020; SynFlow, Tanaka et al. 2020; random
and magnitude), with the controls of Frankle et al. 2021 ("Pruning Neural Networks at Initialization: Why Are
We Missing the Mark?"), beside IMP tickets of a lottery run.

For each seed, method and density D (the fraction of the prunable weights kept, lottery's `weights_remaining`):
score the network at the scoring point (the init, or w_k of a dense training with `--rewind k`), prune it to D
(`sparse.at_init.prune_at_init`: one round or several, the allocation of `--allocation` from
`sparse.allocation.targets`, the counts from the count rule) and train the masked network on [k, T) with the
one training loop. The controls use the method's mask of that density and seed:

  reshuffle  each layer's mask permuted at random (the same count per layer, other positions), on the same weights
  reinit     the same mask on a fresh seeded init

(not for `random`, whose mask already is a random draw). A dense network per seed, trained on [0, T), is the
reference line and gives w_k when `--rewind` is after 0.

Every (method, arm, density, seed) is one unit of the store: resumable, verified, skipped when done.
`--compare RUN` reads a finished lottery run's `results.csv`: its tickets go into this run's rows
(`method = imp`), plot and table, at the level nearest each density.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import models, seeding
from ..data.batches import BatchOrder
from ..errors import UserError
from ..io import CorruptFile
from ..report import plots
from ..results import Results, cell_value, diverged_columns, is_diverged
from ..sparse import Mask, layer_fractions, random_mask_like
from ..sparse.allocation import targets
from ..sparse.at_init import METHODS, Context, default_iterations, prune_at_init
from ..store import Unit, open_existing
from ..train.callbacks import Snapshot
from ..train.fit import Checkpoints
from ..train.jobs import Job
from ..run import Experiment, Report, Work, runner
from .common import Setup

from ..specs.prune_at_init import ARMS, CONTROLS, PruneAtInitOptions, PruneAtInitSpec  # noqa: F401 (torch-free, for the CLI)
from ..report.tables import prune_at_init as table, nearest_levels  # noqa: F401 (torch-free, for `ticketlab show`)

DEFAULT_SCORE_BATCHES = {"snip": 1, "grasp": 2}   # Lee et al.: one batch; Wang et al.'s code: its sample in two halves

COLUMNS = ("method", "arm", "density", "level", "weights_remaining", "seed", "test_accuracy", "best_accuracy",
           "early_stop_step", "early_stop_accuracy", "test_loss", "train_steps", "score_seconds", "seconds")


def _code(density: float) -> int:
    """A density as an integer for seed derivation."""
    return int(round(density * 10**9))


class PruneAtInit(Experiment):
    """Units: per seed the dense network ("dense", "dense", 1.0, seed), and per method and density the pruned
    network ("pruned") and its controls, each (method, arm, density, seed)."""

    name = "prune-at-init"
    metrics = ("test_accuracy", "best_accuracy", "early_stop_accuracy")

    def __init__(self, spec: PruneAtInitSpec, setup: Setup):
        super().__init__(spec, setup)
        o = spec.prune_at_init
        self.total, self.rewind = setup.total_steps, setup.step(o.rewind)
        if self.rewind >= self.total:
            raise UserError(f"--rewind {o.rewind} ({self.rewind} iterations) is not before the end of training "
                            f"(--steps {spec.train.steps} = {self.total} iterations)")
        probe = setup.new_model_like()
        self.prunable = models.prunable_names(probe)
        params = dict(probe.named_parameters())
        self.shapes = {n: tuple(params[n].shape) for n in self.prunable}
        p = spec.prune
        self.fractions = layer_fractions(self.prunable, models.output_name(probe), p.prune_fraction,
                                         p.output_prune_fraction, p.layer_prune_fractions)
        for d in o.densities:   # a density the allocation cannot reach fails here, before anything is written
            self.counts(d)
        self.imp_rows = read_imp(o.compare, spec) if o.compare else []
        self._score_seconds: dict = {}

    def counts(self, density: float) -> list[tuple[tuple[str, ...], int]]:
        return targets(self.spec.prune_at_init.allocation, self.shapes, density, self.fractions)

    # ----------------------------------------------------------------------------------------- units
    def arms(self, method: str) -> list[str]:
        return ["pruned"] + ([] if method == "random" else list(self.spec.prune_at_init.controls))

    def units(self) -> list[Work]:
        o, schedule = self.spec.prune_at_init, self.setup.schedule
        out = []
        for seed in o.seeds:
            dense = ("dense", "dense", 1.0, seed)
            out.append(Work(dense, (), (0, self.total, schedule), self.total, f"dense seed {seed}"))
            for method in o.methods:
                for d in o.densities:
                    pruned = (method, "pruned", d, seed)
                    for arm in self.arms(method):
                        key = (method, arm, d, seed)
                        deps = ((dense,) if self.rewind else ()) + ((pruned,) if arm != "pruned" else ())
                        out.append(Work(key, deps, (self.rewind, self.total, schedule), self.total - self.rewind,
                                        f"{method} {arm} {100 * d:g}% seed {seed}"))
        return out

    def unit_of(self, key) -> Unit:
        method, arm, d, seed = key
        if method == "dense":
            return self.run.unit(f"seed-{seed}", "dense")
        return self.run.unit(f"seed-{seed}", method, f"density-{d:g}", arm)

    # ---------------------------------------------------------------------------------- the masks
    def scoring_weights(self, seed: int) -> dict:
        """The weights the methods score and the pruned networks start from: the init, or w_k."""
        if self.rewind:
            return self.unit_of(("dense", "dense", 1.0, seed)).read("rewind.safetensors")
        model = self.setup.build_model(seed)
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def score_batches(self, method: str, seed: int) -> list:
        """The training batches SNIP and GraSP score on: a seeded order of their own, not augmented."""
        o = self.spec.prune_at_init
        n = o.score_batches or DEFAULT_SCORE_BATCHES.get(method, 1)
        order = BatchOrder(self.setup.data, self.spec.train.batch_size, seeding.derive_seed("prune-at-init batches", seed),
                           augment=False)
        return [order.batch(i) for i in range(n)]

    def method_mask(self, method: str, density: float, seed: int, weights: dict) -> Mask:
        model = self.setup.new_model_like()
        model.load_state_dict(weights)
        code = (seed, METHODS.index(method), _code(density))
        ctx = Context(tuple(self.setup.data.input_shape), lambda: self.score_batches(method, seed),
                      seeding.generator("prune-at-init scores", *code))
        return prune_at_init(method, model, Mask.ones(model, self.prunable), density, self.counts, ctx,
                             iterations=self.spec.prune_at_init.iterations,
                             generator=seeding.generator("prune-at-init ties", *code))

    def start(self, key) -> tuple[Mask, dict]:
        method, arm, d, seed = key
        weights = self.scoring_weights(seed)
        if arm == "pruned":
            began = time.perf_counter()
            mask = self.method_mask(method, d, seed, weights)
            self._score_seconds[key] = round(time.perf_counter() - began, 4)
            return mask, mask.applied(weights)
        mask = Mask(self.unit_of((method, "pruned", d, seed)).read("mask.safetensors"), self.prunable)
        if arm == "reshuffle":
            mask = random_mask_like(mask, seeding.generator("prune-at-init reshuffle", seed, METHODS.index(method), _code(d)))
            return mask, mask.applied(weights)
        if arm == "reinit":
            fresh = self.setup.build_model(seeding.derive_seed("prune-at-init reinit", seed))
            return mask, mask.applied({k: v.detach().cpu().clone() for k, v in fresh.state_dict().items()})
        raise UserError(f"unknown arm {arm!r}; valid: {', '.join(ARMS)}")

    # ------------------------------------------------------------------------------------- training
    def prepare(self, key) -> Job:
        method, arm, d, seed = key
        unit = self.unit_of(key)
        checkpoints = Checkpoints(unit, self.setup.step(self.spec.train.checkpoint_every))
        if method == "dense":
            model = self.setup.build_model(seed)
            weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            callbacks = [Snapshot({self.rewind})] if self.rewind else []
            return Job(key, model, seed, 0, self.total, self.setup.schedule, Mask.ones(model, self.prunable), checkpoints,
                       weights, callbacks)
        mask, weights = self.start(key)
        model = self.setup.new_model_like()
        model.load_state_dict(weights)
        return Job(key, model, seed, self.rewind, self.total, self.setup.schedule, mask, checkpoints, weights, [])

    def finish(self, key, job: Job, fitted, seconds: float) -> dict:
        method, arm, d, seed = key
        final = {k: v.detach().cpu() for k, v in job.model.state_dict().items()}
        result = {**self.describe(key, job), **fitted.summary(), "score_seconds": self._score_seconds.pop(key, None),
                  "seconds": round(seconds, 3)}
        files = {"mask.safetensors": job.mask.to_tensors(), "start.safetensors": job.start_weights,
                 "final.safetensors": final, "metrics.jsonl": fitted.metrics, "sparsity.json": job.mask.report()}
        for cb in job.callbacks:
            if isinstance(cb, Snapshot):
                files["rewind.safetensors"] = cb.captured[self.rewind]
        return {**files, "result.json": result}

    def describe(self, key, job=None) -> dict:
        method, arm, d, seed = key
        mask = job.mask if job is not None else None
        return {"method": method, "arm": arm, "density": d, "weights_remaining": mask.density() if mask is not None else None,
                "seed": seed}

    # --------------------------------------------------------------------------------------- report
    def ordered_rows(self, results: dict) -> list[dict]:
        o = self.spec.prune_at_init
        methods = ["dense", *o.methods]
        order = lambda kv: (-kv[0][2], methods.index(kv[0][0]), ARMS.index(kv[0][1]) if kv[0][1] in ARMS else -1,
                            o.seeds.index(kv[0][3]))
        rows = []
        for key, r in sorted(results.items(), key=order):
            rows.append({**{k: r.get(k) for k in COLUMNS}, **self.describe(key), **diverged_columns(r),
                         "weights_remaining": r.get("weights_remaining")})
        return rows + [{**{k: r.get(k) for k in COLUMNS}, **diverged_columns(r)} for r in self.imp_rows]

    def progress_lines(self, key, result: dict, done: dict) -> list[str]:
        if len(done) < len(self.units()):
            return []
        return table(self.ordered_rows(done))

    def report(self, results: dict) -> Report:
        spec, o = self.spec, self.spec.prune_at_init
        rows = self.ordered_rows(results)
        own = Results([r for r in rows if r["method"] != "imp"])
        summary = own.summary(("method", "arm", "density"))
        dense = next((r["mean"] for r in summary if r["method"] == "dense"), None)
        imp = Results([r for r in rows if r["method"] == "imp"]).summary(("level",)) if self.imp_rows else []
        iterations = {m: o.iterations or default_iterations(m) for m in o.methods}
        title = (f"{spec.model.model} on {spec.data.dataset}: pruning at {'init' if not self.rewind else f'step {self.rewind}'}"
                 f" ({o.allocation})")
        out = {"experiment": spec.experiment, "seeds": list(o.seeds), "dense_accuracy": dense, "iterations": iterations,
               "by_method_arm_density": summary}
        if self.imp_rows:
            out["compare"] = {"run": str(Path(o.compare).resolve()), "imp_by_level": imp,
                              "nearest_level": {f"{d:g}": lv for d, lv in nearest_levels(rows, o.densities).items()}}
        return Report(rows, out, {"accuracy.png": plots.at_init_vs_imp(summary, imp, title, dense)})


# ------------------------------------------------------------------------------------------ compare
def read_imp(path: str, spec: PruneAtInitSpec) -> list[dict]:
    """The ticket rows (every level and seed) of a finished lottery run folder, as `method = imp` rows."""
    run = open_existing(path)
    try:
        record = run.read("spec.json")
        rows = run.read("results.csv")
    except CorruptFile as e:
        raise UserError(f"--compare {path}: no finished lottery results there ({e}); run the lottery to the end first") from None
    if not isinstance(record, dict) or record.get("experiment") != "lottery":
        kind = record.get("experiment") if isinstance(record, dict) else None
        raise UserError(f"--compare {path}: a {kind or 'unknown'} run folder; give a lottery run folder (runs/lottery-<hash>)")
    theirs = {k: v for group in record.get("spec", {}).values() if isinstance(group, dict) for k, v in group.items()}
    for name, mine in (("dataset", spec.data.dataset), ("model", spec.model.model)):
        if theirs.get(name, mine) != mine:
            raise UserError(f"--compare {path}: that lottery run used --{name} {theirs[name]}, this one --{name} {mine}; "
                            f"compare runs of the same {name}")
    out = []
    for r in rows:
        if r.get("arm") != "ticket":
            continue
        row = {k: cell_value(v) for k, v in r.items()}
        row.update(method="imp", arm="ticket", density=None, seed=int(row["seed"]), level=int(row["level"]))
        if not is_diverged(row):
            out.append(row)
    if not out:
        raise UserError(f"--compare {path}: the lottery run has no ticket results")
    return out


EXPERIMENT = PruneAtInit   # what a sweep of this experiment runs


def run(spec: PruneAtInitSpec, *, out: str = "runs", force: bool = False, progress: bool | None = None,
        wait: bool = False) -> Results:
    """Run (or resume) a pruning-at-initialisation experiment; returns the tidy results (and the compared IMP rows)."""
    return runner.run(PruneAtInit, spec, out=out, force=force, progress=progress, wait=wait)
