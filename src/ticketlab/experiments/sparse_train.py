"""Pruning during training: gradual magnitude pruning (Zhu & Gupta 2017) and dynamic sparse training, SET
(Mocanu et al. 2018) and RigL (Evci et al. 2020), the baselines ticket papers compare with.

Every (method, density, seed) is one unit, one ordinary training of `--steps` on the one loop with a
mask-changing callback (`train/sparse_callbacks.py`):

  gmp    starts dense; from --prune-start to --prune-end, every --prune-every steps, the kept weights of
         smallest magnitude are pruned so the sparsity follows Zhu & Gupta's cubic to 1 - density
  set    starts from a random mask at the density (per layer: uniform or ERK counts); every --update-every
         steps before --update-end each layer drops the cosine-decayed fraction of its active weights of
         smallest magnitude and grows as many at random
  rigl   the same, growing where the dense gradient (of the step's batch) is largest

Results are rows like the lottery experiment's (`weights_remaining`, `test_accuracy`, `seed`, ...), with
`method` and `density` in place of `arm` and `level`, so both go on one accuracy-vs-sparsity figure.
The units train alone (never stacked): their callbacks change the mask and the optimizer state.
"""

from __future__ import annotations

import torch

from .. import models, seeding
from ..errors import UserError
from ..report import plots
from ..results import Results, diverged_columns
from ..run import Experiment, Report, Work, runner
from ..sparse import Mask
from ..store import Unit
from ..train.fit import Checkpoints
from ..train.jobs import Job
from ..train.sparse_callbacks import DynamicSparse, GradualMagnitude, kept_counts, random_mask
from .common import Setup

from ..specs.sparse_train import METHODS, SparseTrainOptions, SparseTrainSpec  # noqa: F401 (torch-free, for the CLI)
from ..report.tables import sparse_train as table  # torch-free, also what `ticketlab show` prints

COLUMNS = ("method", "density", "weights_remaining", "seed", "allocation", "test_accuracy", "best_accuracy",
           "early_stop_step", "early_stop_accuracy", "test_loss", "train_steps", "mask_updates", "seconds")


class SparseTrain(Experiment):
    name = "sparse-train"
    metrics = ("test_accuracy", "best_accuracy", "early_stop_accuracy")
    stack_limit = 1   # the callbacks change masks and optimizer state: every unit trains alone

    def __init__(self, spec: SparseTrainSpec, setup: Setup):
        super().__init__(spec, setup)
        s, total = spec.sparse, setup.total_steps
        self.total = total
        self.prune_start = setup.step(s.prune_start) if s.prune_start is not None else total // 10
        self.prune_end = setup.step(s.prune_end) if s.prune_end is not None else 3 * total // 4
        self.prune_every = setup.step(s.prune_every)
        self.update_every = setup.step(s.update_every)
        self.update_end = setup.step(s.update_end) if s.update_end is not None else 3 * total // 4
        if "gmp" in s.methods:
            if self.prune_end > total:
                raise UserError(f"--prune-end {s.prune_end} ({self.prune_end} iterations) is after the end of training "
                                f"(--steps {spec.train.steps} = {total} iterations)")
            if self.prune_start >= self.prune_end:
                raise UserError(f"--prune-start ({self.prune_start} iterations) must be before --prune-end "
                                f"({self.prune_end} iterations)")
        if set(s.methods) & {"set", "rigl"} and self.update_end > total:
            raise UserError(f"--update-end {s.update_end} ({self.update_end} iterations) is after the end of training "
                            f"(--steps {spec.train.steps} = {total} iterations)")
        probe = setup.new_model_like()
        self.prunable = models.prunable_names(probe)
        params = dict(probe.named_parameters())
        self.shapes = {n: tuple(params[n].shape) for n in self.prunable}
        for density in s.densities:   # every layer (ERK: every sparse layer) must keep a weight
            counts = kept_counts(self.shapes, density, "erk" if s.allocation == "erk" else "uniform")
            empty = [n for n, k in counts.items() if k == 0]
            if empty:
                raise UserError(f"--densities {density:g}: layer {empty[0]} ({torch.Size(self.shapes[empty[0]]).numel()} "
                                f"weights) keeps no weight with --allocation {s.allocation}; use a larger density")

    # ------------------------------------------------------------------------------------------ units
    def unit_of(self, key) -> Unit:
        method, density, seed = key
        return self.run.unit(f"seed-{seed}", method, f"density-{density:g}")

    def units(self) -> list[Work]:
        s = self.spec.sparse
        return [Work((method, density, seed), (), None, self.total, f"{method} density {density:g} seed {seed}")
                for seed in s.seeds for method in s.methods for density in s.densities]

    def callback(self, method: str, density: float, seed: int, mask: Mask):
        s = self.spec.sparse
        if method == "gmp":
            return GradualMagnitude(mask, density, start=self.prune_start, end=self.prune_end, every=self.prune_every,
                                    allocation=s.allocation, seed=seed)
        return DynamicSparse(mask, method, every=self.update_every, end=self.update_end, alpha=s.drop_fraction, seed=seed)

    def initial_mask(self, method: str, density: float, seed: int) -> Mask:
        if method == "gmp":
            return Mask({n: torch.ones(shape, dtype=torch.bool) for n, shape in self.shapes.items()}, self.prunable)
        # the same random start mask for set and rigl of one (density, seed): they differ only in growth
        return random_mask(self.shapes, density, self.spec.sparse.allocation,
                           seeding.generator("sparse-start", seed, round(density * 10**9)))

    def prepare(self, key) -> Job:
        method, density, seed = key
        model = self.setup.build_model(seed)
        mask = self.initial_mask(method, density, seed)
        weights = mask.applied({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        checkpoints = Checkpoints(self.unit_of(key), self.setup.step(self.spec.train.checkpoint_every))
        return Job(key, model, seed, 0, self.total, self.setup.schedule, mask, checkpoints, weights,
                   [self.callback(method, density, seed, mask)])

    def finish(self, key, job: Job, fitted, seconds: float) -> dict:
        method, density, seed = key
        final = {k: v.detach().cpu() for k, v in job.model.state_dict().items()}
        cb = job.callbacks[0]
        updates = len(cb.steps) if method == "gmp" else sum(1 for t in range(1, self.total) if cb.due(t))
        result = {"method": method, "density": density, "weights_remaining": job.mask.density(), "seed": seed,
                  "allocation": self.spec.sparse.allocation, **fitted.summary(), "mask_updates": updates,
                  "seconds": round(seconds, 3)}
        return {"mask.safetensors": job.mask.to_tensors(), "start_mask.safetensors": self.initial_mask(method, density, seed).to_tensors(),
                "start.safetensors": job.start_weights, "final.safetensors": final, "metrics.jsonl": fitted.metrics,
                "sparsity.json": job.mask.report(), "result.json": result}

    def describe(self, key, job=None) -> dict:
        method, density, seed = key
        return {"method": method, "density": density, "weights_remaining": None, "seed": seed,
                "allocation": self.spec.sparse.allocation}

    # ----------------------------------------------------------------------------------------- report
    def header_lines(self) -> list[str]:
        self._printed = set()
        return table([{"method": m, "density": 1.0, "test_accuracy": None} for m in self.spec.sparse.methods])[:1]

    def progress_lines(self, key, result: dict, done: dict) -> list[str]:
        """A density's line of the table once every method and seed of it is done."""
        s, printed = self.spec.sparse, getattr(self, "_printed", set())
        self._printed = printed
        lines = []
        for density in s.densities:
            keys = [(m, density, seed) for m in s.methods for seed in s.seeds]
            if density not in printed and all(k in done for k in keys):
                printed.add(density)
                lines += table([{**done[k], "method": k[0], "density": density} for k in keys])[1:]
        return lines

    def report(self, results: dict) -> Report:
        s, spec = self.spec.sparse, self.spec
        ordered = sorted(results.values(), key=lambda r: (s.methods.index(r["method"]), -r["density"], s.seeds.index(r["seed"])))
        rows = [{**{k: r.get(k) for k in COLUMNS}, **diverged_columns(r)} for r in ordered]
        summary = Results(rows).summary(("method", "density"))
        for row in summary:   # the mean weights remaining of each point (the x of the figure)
            kept = [r["weights_remaining"] for r in rows if r["method"] == row["method"] and r["density"] == row["density"]
                    and r.get("weights_remaining") is not None]
            row["weights_remaining"] = sum(kept) / len(kept) if kept else None
        title = f"{spec.model.model} on {spec.data.dataset}: sparse training ({s.allocation} allocation)"
        curves = [{**r, "arm": r["method"]} for r in summary]
        return Report(rows, {"experiment": spec.experiment, "seeds": list(s.seeds), "by_method_and_density": summary},
                      {"accuracy.png": plots.accuracy_vs_sparsity(curves, title)})


EXPERIMENT = SparseTrain   # what a sweep of this experiment runs


def run(spec: SparseTrainSpec, *, out: str = "runs", force: bool = False, progress: bool | None = None,
        wait: bool = False) -> Results:
    """Run (or resume) a sparse-training experiment; returns the tidy results and writes them into the run folder."""
    return runner.run(SparseTrain, spec, out=out, force=force, progress=progress, wait=wait)
