"""Forget-and-relearn (Zhou, Vani, Larochelle & Courville 2022, "Fortuitous Forgetting in Connectionist
Networks"), with knowledge evolution (Taha et al. 2021) as one of its operations.

For each seed: generation 0 trains the network normally on [0, T) (T = `--steps`). Each later generation g
applies a forgetting operation (`sparse/forget.py`: llf, ke, random, imp) to generation g-1's final weights and
retrains them for T steps with a fresh schedule (the same schedule as generation 0, from its start), on a data
order of its own (seeded by (seed, g), the same for every method, so methods are compared on the same batches).
Baselines in the same run: `none` (generation 0 alone) and `long` (one training of (generations + 1) x T steps
from generation 0's initial weights and data order, its schedule stretched over the whole budget: cosine over it,
milestones scaled by generations + 1, the same warmup). imp rewinds to generation 0's initial weights.

Every unit also measures its final network on the whole training set (no augmentation) against the labels it is
trained on: `train_accuracy`, and with `--random-labels` `train_accuracy_clean` and `train_accuracy_mislabeled`
(the latter: how many randomised labels the network has memorised).

`--probe targeted` watches generation 0 with `instruments/targeted.py`: every `--probe-every` steps, a copy of
the network is forgotten by each method and the two groups are measured before and after (probes.csv,
probes.png). `--generations 0 --probe targeted` is the targeted-forgetting experiment alone.

Units (keys `(method, generation, seed)`): `seed-<s>/gen-00` (method `none`, generation 0, shared by every
method), `seed-<s>/<method>/gen-<g>` (depends on generation g-1 of the same method, or on gen-00), and
`seed-<s>/long`. Generations of different methods and seeds share a window and a schedule, so the runner may
stack them. Each is checkpointed like any training, so a killed run resumes with identical results.
"""

from __future__ import annotations

import dataclasses

import torch

from .. import data as datasets
from .. import seeding, steps
from ..errors import UserError
from ..instruments.targeted import TargetedForgetting
from ..report import plots
from ..results import Results, diverged_columns
from ..sparse.forget import Forgetting, check, forget_, freeze_mask
from ..store import Unit
from ..train.evaluate import evaluate
from ..train.fit import Checkpoints
from ..train.jobs import Job
from ..run import Experiment, Report, Work, runner
from .common import Setup

from ..specs.forget import ForgetOperation, ForgetOptions, ForgetSpec  # noqa: F401 (torch-free, for the CLI)
from ..report.tables import forget as table, forget_header, forget_line  # noqa: F401 (torch-free, for `ticketlab show`)

COLUMNS = ("method", "generation", "seed", "test_accuracy", "train_accuracy", "train_accuracy_clean",
           "train_accuracy_mislabeled", "best_accuracy", "test_loss", "kept", "train_steps", "seconds")
PROBE_COLUMNS = ("method", "seed", "step", "group", "size", "accuracy_before", "accuracy_after", "loss_before",
                 "loss_after", "entropy_before", "entropy_after")


def operation(spec: ForgetSpec, method: str) -> Forgetting:
    """The forgetting operation `method` with the spec's settings."""
    o = spec.operation
    return Forgetting(method, reset_from=o.reset_from, redraw=o.redraw, reset_bn=o.reset_bn, split_rate=o.split_rate,
                      split_mode=o.split_mode, keep=o.keep, output_rate_factor=o.output_rate_factor,
                      fix_seed=o.fix_seed, init=spec.model.init)


class Forget(Experiment):
    """The units of one forget-and-relearn run (see the module docstring)."""

    name = "forget"
    metrics = ("test_accuracy", "train_accuracy")

    def __init__(self, spec: ForgetSpec, setup: Setup):
        super().__init__(spec, setup)
        fo = spec.forget
        self.total = setup.total_steps
        self.generations = fo.generations
        budget = (fo.generations + 1) * self.total
        if budget > steps.MAX_ITERATIONS:
            raise UserError(f"--generations {fo.generations}: the long baseline would train {budget} iterations "
                            f"((generations + 1) x {self.total}); at most {steps.MAX_ITERATIONS} (10**9)")
        probe = setup.new_model_like()
        self.operations = {m: operation(spec, m) for m in fo.methods}
        for op in [*self.operations.values(), operation(spec, "llf")]:   # a bad --reset-from is refused whatever --methods
            check(probe, op)
        self.probe_every = setup.step(fo.probe_every)
        if fo.probe == "targeted" and self.probe_every <= 0:
            raise UserError(f"--probe-every {fo.probe_every}: must be at least one iteration")
        n = len(setup.data.train_y)
        self.mislabeled = datasets.random_label_indices(n, spec.data.random_labels, spec.data.data_seed)
        if fo.probe == "targeted" and fo.groups == "labels" and not len(self.mislabeled):
            raise UserError(f"--random-labels {spec.data.random_labels} randomises no label of the {n} training "
                            f"examples: use a larger fraction, or --groups margin")
        s = setup.schedule
        self.long_schedule = dataclasses.replace(s, total=budget, milestones=tuple(m * (fo.generations + 1) for m in s.milestones))
        self._keep: dict = {}
        self._init: dict = {}

    # ------------------------------------------------------------------------------------------ units
    def unit_of(self, key) -> Unit:
        method, generation, seed = key
        if method == "none":
            return self.run.unit(f"seed-{seed}", "gen-00")
        if method == "long":
            return self.run.unit(f"seed-{seed}", "long")
        return self.run.unit(f"seed-{seed}", method, f"gen-{generation:02d}")

    def units(self) -> list[Work]:
        out, fo = [], self.spec.forget
        group = (0, self.total, self.setup.schedule)
        for seed in fo.seeds:
            out.append(Work(("none", 0, seed), (), group, self.total, f"seed {seed} generation 0"))
            for method in fo.methods:
                for g in range(1, fo.generations + 1):
                    dep = ("none", 0, seed) if g == 1 else (method, g - 1, seed)
                    out.append(Work((method, g, seed), (dep,), group, self.total, f"{method} seed {seed} generation {g}"))
            if fo.generations:
                budget = (fo.generations + 1) * self.total
                out.append(Work(("long", fo.generations, seed), (), (0, budget, self.long_schedule), budget,
                                f"long seed {seed}"))
        return out

    def data_seed(self, seed: int, generation: int) -> int:
        """The data order of a generation: the seed's own for generation 0 (and the long baseline)."""
        return seed if generation == 0 else seeding.derive_seed("forget-generation", seed, generation)

    def initial(self, seed: int) -> dict:
        """Generation 0's initial weights (imp rewinds to them)."""
        if seed not in self._init:
            self._init[seed] = self.unit_of(("none", 0, seed)).read("start.safetensors")
        return self._init[seed]

    def prepare(self, key) -> Job:
        method, generation, seed = key
        unit = self.unit_of(key)
        checkpoints = Checkpoints(unit, self.setup.step(self.spec.train.checkpoint_every))
        if method in ("none", "long"):
            model = self.setup.build_model(seed)
            weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if method == "long":
                return Job(key, model, seed, 0, (self.generations + 1) * self.total, self.long_schedule, None,
                           checkpoints, weights, [])
            callbacks = []
            if self.spec.forget.probe == "targeted":
                d = self.setup.data
                callbacks.append(TargetedForgetting(self.operations, d.train_x, d.train_y, every=self.probe_every,
                                                    seed=seed, init_state=weights, groups=self.spec.forget.groups,
                                                    mislabeled=self.mislabeled, batch_size=self.spec.train.eval_batch_size))
            return Job(key, model, seed, 0, self.total, self.setup.schedule, None, checkpoints, weights, callbacks)
        previous = self.unit_of(("none", 0, seed) if generation == 1 else (method, generation - 1, seed))
        model = self.setup.new_model_like()
        model.load_state_dict(previous.read("final.safetensors"))
        keep = forget_(model, self.operations[method], init_state=self.initial(seed), seed=seed, generation=generation)
        self._keep[key] = keep
        start = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        mask = freeze_mask(model, keep, self.spec.operation.freeze)
        return Job(key, model, self.data_seed(seed, generation), 0, self.total, self.setup.schedule, mask, checkpoints,
                   start, [])

    def train_accuracy(self, model) -> dict:
        """The final network on the whole training set (labels as trained on), and on its two groups."""
        d, bs = self.setup.data, self.spec.train.eval_batch_size
        _, acc = evaluate(model, d.train_x, d.train_y, bs)
        out = {"train_accuracy": acc}
        if len(self.mislabeled):
            member = torch.zeros(len(d.train_y), dtype=torch.bool)
            member[self.mislabeled] = True
            member = member.to(d.train_y.device)
            for name, part in (("clean", ~member), ("mislabeled", member)):
                out[f"train_accuracy_{name}"] = evaluate(model, d.train_x[part], d.train_y[part], bs)[1]
        return out

    def finish(self, key, job: Job, fitted, seconds: float) -> dict:
        method, generation, seed = key
        final = {k: v.detach().cpu() for k, v in job.model.state_dict().items()}
        files = {"start.safetensors": job.start_weights, "final.safetensors": final, "metrics.jsonl": fitted.metrics}
        kept = None
        keep = self._keep.pop(key, None)
        if keep is not None:
            files["keep.safetensors"] = {k: v.cpu() for k, v in keep.items()}
            total = sum(v.numel() for v in keep.values())
            kept = sum(int(v.sum()) for v in keep.values()) / max(total, 1)
        for cb in job.callback_list():
            if isinstance(cb, TargetedForgetting):
                files["probes.jsonl"] = [{"seed": seed, **r} for r in cb.rows()]
        result = {"method": method, "generation": generation, "seed": seed, **fitted.summary(),
                  **self.train_accuracy(job.model), "kept": kept, "seconds": round(seconds, 3)}
        return {**files, "result.json": result}

    def describe(self, key, job=None) -> dict:
        method, generation, seed = key
        return {"method": method, "generation": generation, "seed": seed}

    # ----------------------------------------------------------------------------------------- report
    def header_lines(self) -> list[str]:
        self._printed = 0
        return [forget_header(list(self.spec.forget.methods))] if self.spec.forget.methods else []

    def progress_lines(self, key, result: dict, done: dict) -> list[str]:
        fo, lines = self.spec.forget, []
        self._printed = getattr(self, "_printed", 0)
        while fo.methods and self._printed <= fo.generations:
            g = self._printed
            keys = [("none", 0, s) for s in fo.seeds] if g == 0 else [(m, g, s) for m in fo.methods for s in fo.seeds]
            if not all(k in done for k in keys):
                break
            lines.append(forget_line(g, [{**done[k], **self.describe(k)} for k in keys], list(fo.methods)))
            self._printed += 1
        return lines

    def probe_rows(self, results: dict) -> list[dict]:
        rows = []
        if self.spec.forget.probe != "targeted":
            return rows
        for seed in self.spec.forget.seeds:
            key = ("none", 0, seed)
            if key in results and not results[key].get("diverged"):
                rows += [{c: r.get(c) for c in PROBE_COLUMNS} for r in self.unit_of(key).read("probes.jsonl")]
        return rows

    def report(self, results: dict) -> Report:
        fo, spec = self.spec.forget, self.spec
        order = {m: i for i, m in enumerate(("none", *fo.methods, "long"))}
        ordered = sorted(results.values(), key=lambda r: (order.get(r["method"], 99), r["generation"], fo.seeds.index(r["seed"])))
        rows = [{**{k: r.get(k) for k in COLUMNS}, **diverged_columns(r)} for r in ordered]
        summary = Results(rows).summary(("method", "generation"))
        long = next((s for s in summary if s["method"] == "long"), None)
        noise = f", {spec.data.random_labels:g} random labels" if spec.data.random_labels else ""
        title = f"{spec.model.model} on {spec.data.dataset}{noise}: forget and relearn"
        files = {"accuracy.png": plots.accuracy_vs_generation(summary, title, long)}
        extra = {"experiment": spec.experiment, "seeds": list(fo.seeds), "by_method_and_generation": summary,
                 "train_accuracy": Results(rows).summary(("method", "generation"), "train_accuracy")}
        probes = self.probe_rows(results)
        if probes:
            files["probes.csv"] = probes
            files["probes.png"] = plots.probe_drops(probes, f"{spec.model.model} on {spec.data.dataset}{noise}: "
                                                    f"targeted forgetting ({fo.groups})")
            extra["probe_drops"] = probe_drops(probes)
        return Report(rows, extra, files)


def probe_drops(rows: list[dict]) -> list[dict]:
    """Per method and group: the accuracy drop (before - after) averaged over every probe and seed, and the
    accuracy before."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        for group in dict.fromkeys(r["group"] for r in rows if r["method"] == method):
            part = [r for r in rows if r["method"] == method and r["group"] == group
                    and r["accuracy_before"] == r["accuracy_before"] and r["accuracy_after"] == r["accuracy_after"]]
            if part:
                out.append({"method": method, "group": group, "probes": len(part),
                            "accuracy_before": sum(r["accuracy_before"] for r in part) / len(part),
                            "drop": sum(r["accuracy_before"] - r["accuracy_after"] for r in part) / len(part)})
    return out


# ------------------------------------------------------------------------------------------------- run
EXPERIMENT = Forget   # what a sweep of this experiment runs


def run(spec: ForgetSpec, *, out: str = "runs", force: bool = False, progress: bool | None = None,
        wait: bool = False) -> Results:
    """Run (or resume) a forget-and-relearn experiment; returns the tidy results and writes them into the run folder.
    `--task referential-game` runs the referential game instead (`experiments/referential.py`)."""
    if spec.forget.task == "referential-game":
        from .referential import ReferentialGame

        return runner.run(ReferentialGame, spec, out=out, force=force, progress=progress, wait=wait)
    return runner.run(Forget, spec, out=out, force=force, progress=progress, wait=wait)
