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

from dataclasses import dataclass

import torch

from .. import seeding
from ..errors import UserError
from ..report import plots
from ..results import Results, diverged_columns
from ..sparse import Mask, layer_fractions, prune, random_mask_like, score
from ..sparse.allocation import pools
from ..sparse.schedule import most_levels
from ..store import Derived, Unit
from ..train import Schedule
from ..train.fit import Checkpoints
from ..train.jobs import Job
from ..train.callbacks import Snapshot
from ..run import Experiment, Report, Work, runner
from .common import Setup
from .lca import heat_map_layer, recorder, recorder_files
from .. import models

from ..specs.lottery import RETRAIN, CONTROLS, LotteryOptions, LotteryLCA, LotterySpec  # noqa: F401 (torch-free, for the CLI)
from ..report.tables import lottery as table, header, format_row  # noqa: F401 (torch-free, for `ticketlab show`)


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


def check_levels(levels: int, flag: str, probe, prune_spec) -> None:
    """Refuse more pruning levels than leave at least one weight in every prunable layer (with
    `--prune-scope global`, in every pool of layers pruned together) at the spec's prune fractions."""
    p = prune_spec
    names = models.prunable_names(probe)
    fractions = layer_fractions(names, models.output_name(probe), p.prune_fraction, p.output_prune_fraction,
                                p.layer_prune_fractions)
    sizes = {n: w.numel() for n, w in probe.named_parameters()}
    limits = []
    for group, fraction in pools(names, fractions, p.prune_scope, p.prune_fraction):
        total = sum(sizes[n] for n in group)
        limits.append((most_levels(total, fraction, levels), group, total, fraction))
    if not limits:
        return
    most, group, total, fraction = min(limits, key=lambda x: x[0])
    if most < levels:
        what = group[0] if len(group) == 1 else f"the {len(group)} layers pruned together"
        raise UserError(f"{flag} {levels}: {what} ({total} weights, {fraction:g} pruned per level) keeps no weight "
                        f"after level {most}; use at most {most} levels, or prune less per level")


# ----------------------------------------------------------------------------------------------- units
class Lottery(Experiment):
    """The units of one lottery experiment: per seed, the dense network (level 0, one uninterrupted training
    on [0, T) that also captures w_k), the chain of tickets, and each level's controls (which need that
    level's ticket mask, so they train beside the next level's ticket)."""

    name = "lottery"
    metrics = ("test_accuracy", "best_accuracy", "early_stop_accuracy")

    def __init__(self, spec: LotterySpec, setup: Setup):
        super().__init__(spec, setup)
        self._rewind_points: dict[int, tuple[dict, dict]] = {}
        self.plan = Plan.of(spec, setup)
        probe = setup.new_model_like()
        self.prunable = models.prunable_names(probe)
        self.output = models.output_name(probe)
        p = spec.prune
        self.fractions = layer_fractions(self.prunable, self.output, p.prune_fraction, p.output_prune_fraction,
                                         p.layer_prune_fractions)
        check_levels(spec.lottery.levels, "--levels", probe, p)
        if spec.lca.lca or spec.lca.lca_layer:
            heat_map_layer(spec.lca, probe, spec.model.model)
        self.stack_limit = 1 if spec.lca.lca else 0   # LCA watches one model at a time

    def arms(self, level: int) -> list[str]:
        return ["ticket"] + (list(self.spec.lottery.controls) if level > 0 else [])

    def unit(self, seed: int, level: int, arm: str) -> Unit:
        return self.run.unit(f"seed-{seed}", f"level-{level:02d}", arm)

    def unit_of(self, key) -> Unit:
        arm, seed, level = key
        return self.unit(seed, level, arm)

    def check_folder(self, run) -> None:
        old = sorted(run.path.glob("seed-*/pretrain"))
        if old:
            raise UserError(f"{run.path} was made by an earlier ticketlab that trained the dense network in two pieces "
                            f"(pretrain to --rewind, then on; {old[0]}); its level 0 differs from today's: "
                            f"use --force to recompute or another --out")

    def window(self, level: int, arm: str) -> tuple[int, int, Schedule]:
        """The iterations an arm trains and the schedule it follows. Level 0 is always the whole [0, T)."""
        mode, plan, sched = self.spec.lottery.retrain, self.plan, self.setup.schedule
        if level == 0:
            return 0, plan.total, sched
        if arm != "ticket" or mode == "rewind":
            return plan.rewind, plan.total, sched
        if mode == "finetune":
            return plan.total, plan.total + plan.retrain, sched.constant_at(plan.total - 1)
        return plan.total - plan.retrain, plan.total, sched

    # --------------------------------------------------------------------------------- rewind point
    def rewind_point(self, seed: int) -> tuple[dict, dict]:
        """(w_0, w_k) of a seed, from its dense network's unit (w_k captured while it trained)."""
        if seed not in self._rewind_points:
            dense = self.unit(seed, 0, "ticket")
            init = dense.read("start.safetensors")
            self._rewind_points[seed] = (init, dense.read("rewind.safetensors") if self.plan.rewind else init)
        return self._rewind_points[seed]

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

    def start_source(self, seed: int, level: int, arm: str) -> tuple[Unit, str] | None:
        """Where a unit's start weights come from when they are a stored file times its mask (the store then
        keeps a reference instead of a copy): the rewind point, or the previous ticket's final weights when
        fine-tuning. None: stored in full (level 0's init, re-initialised and reshuffled controls)."""
        if level == 0 or arm in ("random_reinit", "reshuffle"):
            return None
        if arm == "ticket" and self.spec.lottery.retrain != "rewind":
            return self.unit(seed, level - 1, "ticket"), "final.safetensors"
        return self.unit(seed, 0, "ticket"), "rewind.safetensors" if self.plan.rewind else "start.safetensors"

    # ------------------------------------------------------------------------------------------ units
    def units(self) -> list[Work]:
        out = []
        for seed in self.spec.lottery.seeds:
            for level in range(self.spec.lottery.levels + 1):
                for arm in self.arms(level):
                    start, end, schedule = self.window(level, arm)
                    deps = ((("ticket", seed, level - 1),) if arm == "ticket" and level else ()) + \
                        ((("ticket", seed, level),) if arm != "ticket" else ())
                    out.append(Work((arm, seed, level), deps, (start, end, schedule), end - start,
                                    f"{arm} seed {seed} level {level}"))
        return out

    def prepare(self, key) -> Job:
        arm, seed, level = key
        unit = self.unit_of(key)
        callbacks = []
        if level == 0:
            model = self.setup.build_model(seed)
            mask = self.ticket_mask(seed, 0, model.state_dict())
            weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}   # a copy: training changes the model in place
            if self.plan.rewind:
                callbacks.append(Snapshot({self.plan.rewind}))
        else:
            _, rewind_weights = self.rewind_point(seed)
            mask, weights = self.start_weights(seed, level, arm, rewind_weights)
            model = self.setup.new_model_like()
            model.load_state_dict(weights)
        start, end, schedule = self.window(level, arm)
        if self.spec.lca.lca:
            callbacks.append(recorder(self.spec.lca, self.setup, model, mask, unit))
        checkpoints = Checkpoints(unit, self.setup.step(self.spec.train.checkpoint_every))
        return Job(key, model, seed, start, end, schedule, mask, checkpoints, weights, callbacks)

    def finish(self, key, job: Job, fitted, seconds: float) -> dict:
        arm, seed, level = key
        final = {k: v.detach().cpu() for k, v in job.model.state_dict().items()}
        result = {"level": level, "weights_remaining": job.mask.density(), "arm": arm, "seed": seed,
                  **fitted.summary(), "seconds": round(seconds, 3)}
        source = self.start_source(seed, level, arm)
        start = job.start_weights if source is None else Derived(*source, "mask.safetensors", job.start_weights)
        files = {"mask.safetensors": job.mask.to_tensors(), "start.safetensors": start,
                 "final.safetensors": final, "metrics.jsonl": fitted.metrics, "sparsity.json": job.mask.report()}
        for cb in job.callbacks:
            if isinstance(cb, Snapshot):
                files["rewind.safetensors"] = cb.captured[self.plan.rewind]
            else:   # the LCA recorder
                cb.flush()
                files.update(recorder_files(cb))
                summary = files["lca_summary.json"]
                result.update(lca_relative_error=summary.get("relative_error"),
                              lca_fraction_helped=summary.get("fraction_helped"))
        return {**files, "result.json": result}

    def describe(self, key, job=None) -> dict:
        arm, seed, level = key
        mask = job.mask if job is not None else None
        return {"level": level, "weights_remaining": mask.density() if mask is not None else None, "arm": arm, "seed": seed}

    # ----------------------------------------------------------------------------------------- report
    def header_lines(self) -> list[str]:
        self._printed = 0
        return [header(["ticket", *self.spec.lottery.controls])]

    def progress_lines(self, key, result: dict, done: dict) -> list[str]:
        lines, lo, arms = [], self.spec.lottery, ["ticket", *self.spec.lottery.controls]
        self._printed = getattr(self, "_printed", 0)
        while self._printed <= lo.levels:
            level = self._printed
            keys = [(arm, seed, level) for seed in lo.seeds for arm in self.arms(level)]
            if not all(k in done for k in keys):
                break
            lines.append(format_row(level, [done[k] for k in keys], arms))
            self._printed += 1
        return lines

    def report(self, results: dict) -> Report:
        lo, spec = self.spec.lottery, self.spec
        arms = ["ticket", *lo.controls]
        ordered = sorted(results.values(), key=lambda r: (r["level"], lo.seeds.index(r["seed"]), arms.index(r["arm"])))
        columns = COLUMNS + (("lca_relative_error", "lca_fraction_helped") if spec.lca.lca else ())
        rows = [{**{k: r.get(k) for k in columns}, **diverged_columns(r)} for r in ordered]
        summary = Results(rows).summary()
        dense = [r["mean"] for r in summary if r["level"] == 0 and r["arm"] == "ticket"]
        title = f"{spec.model.model} on {spec.data.dataset}: lottery ({lo.retrain}, rewind {lo.rewind})"
        return Report(rows, {"experiment": spec.experiment, "seeds": list(lo.seeds),
                             "dense_accuracy": dense[0] if dense else None, "by_level_and_arm": summary},
                      {"accuracy.png": plots.accuracy_vs_sparsity(summary, title, dense[0] if dense else None)})


# ------------------------------------------------------------------------------------------------- run
COLUMNS = ("level", "weights_remaining", "arm", "seed", "test_accuracy", "best_accuracy", "early_stop_step",
           "early_stop_accuracy", "test_loss", "train_steps", "seconds")


EXPERIMENT = Lottery   # what a sweep of this experiment runs


def run(spec: LotterySpec, *, out: str = "runs", force: bool = False, progress: bool | None = None,
        wait: bool = False) -> Results:
    """Run (or resume) a lottery experiment; returns the tidy results and writes them into the run folder."""
    return runner.run(Lottery, spec, out=out, force=force, progress=progress, wait=wait)
