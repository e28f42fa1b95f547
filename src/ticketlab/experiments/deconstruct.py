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
task graph run by the unit runner (`run/`): worker processes or Ray, and the
K-model engine inside each where it pays.
"""

from __future__ import annotations


from .. import seeding
from ..report import plots
from ..results import Results, diverged_columns
from ..sparse import Mask
from ..sparse.actions import mask_one, with_actions
from ..store import Run, Unit
from ..train import evaluate
from ..run import Experiment, Report, Work, runner
from .common import Setup
from .lottery import Lottery, format_row, header


from ..specs.deconstruct import DeconstructPruneSpec, DeconstructOptions, DeconstructSpec  # noqa: F401 (torch-free, for the CLI)
from ..report.tables import deconstruct as table  # noqa: F401 (torch-free, for `ticketlab show`)


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
        """The files of the level's mask on the untrained init (`weights`: rewind or signed_constant), evaluated."""
        init, _ = self.rewind_point(seed)
        mask = Mask(self.unit(seed, level, "ticket").read("mask.safetensors"), self.prunable)
        start = mask_one(weights, init, mask, seeding.generator("untrained", seed, level))
        model = self.setup.new_model_like()
        model.load_state_dict(start)
        loss, acc = evaluate(model, self.setup.data.test_x, self.setup.data.test_y, self.spec.train.eval_batch_size)
        return {"result.json": {"level": level, "weights_remaining": mask.density(), "test_accuracy": acc, "test_loss": loss}}


# ------------------------------------------------------------------------------------------------- run
COLUMNS = ("criterion", "mask_one", "mask_zero", "phase", "level", "weights_remaining", "seed", "test_accuracy",
           "best_accuracy", "early_stop_step", "early_stop_accuracy", "test_loss", "train_steps", "seconds")


class Deconstruct(Experiment):
    """Every cell of the grid: units are (criterion, mask-1 action, seed, level) trainings, the shared dense
    network ("dense", "none", seed, 0), and the untrained evaluations ("untrained", criterion, weights,
    seed, level) of the first mask-1 action's masks. Trainings of one window stack where the K-model
    engine pays (mask-0 fills included)."""

    name = "deconstruct"

    def __init__(self, spec: DeconstructSpec, setup: Setup):
        super().__init__(spec, setup)
        d = spec.deconstruct
        self.base = Chain(spec, setup, spec.prune.criterion[0], d.mask_one[0], None)  # bad input fails here
        self.chains = {(c, a): Chain(spec, setup, c, a, self.base) for a in d.mask_one for c in spec.prune.criterion}

    def attach(self, run: Run, out: str) -> None:
        super().attach(run, out)
        for chain in [self.base, *self.chains.values()]:
            chain.run = run

    def check_folder(self, run: Run) -> None:
        self.base.check_folder(run)

    def chain(self, key) -> Chain:
        return self.base if key[3] == 0 else self.chains[(key[0], key[1])]

    def units(self) -> list[Work]:
        d, plan = self.spec.deconstruct, self.base.plan
        out = []
        for seed in d.seeds:
            dense = ("dense", "none", seed, 0)
            out.append(Work(dense, (), (0, plan.total), plan.total, f"dense seed {seed}"))
            for (criterion, action) in self.chains:
                for level in range(1, d.levels + 1):
                    before = dense if level == 1 else (criterion, action, seed, level - 1)
                    key = (criterion, action, seed, level)
                    out.append(Work(key, (before,), (plan.rewind, plan.total), plan.total - plan.rewind,
                                    f"{criterion} {action} seed {seed} level {level}"))
                    if action == d.mask_one[0]:
                        out += [Work(("untrained", criterion, weights, seed, level), (key,)) for weights in d.untrained]
        return out

    def unit_of(self, key) -> Unit:
        if key[0] == "untrained":
            _, criterion, weights, seed, level = key
            return self.chains[(criterion, self.spec.deconstruct.mask_one[0])].unit(seed, level, f"untrained-{weights}")
        return self.chain(key).unit_of(("ticket", key[2], key[3]))

    def prepare(self, key):
        if key[0] == "untrained":
            _, criterion, weights, seed, level = key
            return self.chains[(criterion, self.spec.deconstruct.mask_one[0])].untrained(seed, level, weights)
        return self.chain(key).prepare(("ticket", key[2], key[3]))

    def finish(self, key, job, fitted, seconds: float) -> dict:
        return self.chain(key).finish(("ticket", key[2], key[3]), job, fitted, seconds)

    def describe(self, key, job=None) -> dict:
        if key[0] == "untrained":
            return {"level": key[4], "weights_remaining": None}
        return self.chain(key).describe(("ticket", key[2], key[3]), job)

    def row(self, key, result: dict) -> dict:
        d = self.spec.deconstruct
        if key[0] == "untrained":
            _, criterion, weights, seed, _ = key
            return _row({**result, "seed": seed}, criterion, weights, "zero", "untrained")
        criterion, action, _, level = key
        return _row(result, criterion, action, "none" if level == 0 else d.mask_zero, "trained")

    def level_keys(self, level: int) -> list:
        return [w.key for w in self.units() if w.key[-1] == level and (w.key[0] != "untrained" or level > 0)]

    def header_lines(self) -> list[str]:
        self._printed = 0
        return []

    def progress_lines(self, key, result: dict, done: dict) -> list[str]:
        d, lines = self.spec.deconstruct, []
        self._printed = getattr(self, "_printed", 0)
        while self._printed <= d.levels:
            keys = self.level_keys(self._printed)
            if not all(k in done for k in keys):
                break
            lines += _level_lines(self._printed, [self.row(k, done[k]) for k in keys], list(self.spec.prune.criterion), d)
            self._printed += 1
        return lines

    def report(self, results: dict) -> Report:
        spec = self.spec
        rows = [{**{k: r.get(k) for k in COLUMNS}, **diverged_columns(r)} for level in range(spec.deconstruct.levels + 1)
                for r in (self.row(k, results[k]) for k in self.level_keys(level))]
        results_table = Results(rows)
        summary = results_table.summary(("criterion", "mask_one", "mask_zero", "phase", "level"))
        dense = [r["mean"] for r in summary if r["criterion"] == "dense"]
        dense = dense[0] if dense else None
        files = {}
        name = f"{spec.model.model} on {spec.data.dataset}"
        for action in spec.deconstruct.mask_one:
            part = [r for r in summary if r["phase"] == "trained" and r["mask_one"] == action and r["criterion"] != "dense"]
            title = f"{name}: mask-1 {action}, mask-0 {spec.deconstruct.mask_zero}" + (", rescaled" if spec.deconstruct.rescale else "")
            files[f"accuracy-{action}.png"] = plots.accuracy_by_criterion(part, title, dense)
        for weights in spec.deconstruct.untrained:
            part = [r for r in summary if r["phase"] == "untrained" and r["mask_one"] == weights]
            if part:
                files[f"untrained-{weights}.png"] = plots.accuracy_by_criterion(part, f"{name}: untrained supermask ({weights} weights)", dense)
        return Report(rows, {"experiment": spec.experiment, "seeds": list(spec.deconstruct.seeds),
                             "dense_accuracy": dense, "by_cell_and_level": summary}, files)


EXPERIMENT = Deconstruct   # what a sweep of this experiment runs


def run(spec: DeconstructSpec, *, out: str = "runs", force: bool = False, progress: bool | None = None,
        wait: bool = False) -> Results:
    """Run (or resume) the deconstruct grid; returns tidy rows (`phase` trained / untrained)."""
    return runner.run(Deconstruct, spec, out=out, force=force, progress=progress, wait=wait)


def _row(result: dict, criterion: str, action: str, mask_zero: str, phase: str) -> dict:
    return {**result, "criterion": criterion, "mask_one": action, "mask_zero": mask_zero, "phase": phase}


def _level_lines(level: int, rows: list[dict], criteria: list[str], d) -> list[str]:
    if level == 0:
        dense = [{**r, "arm": "dense"} for r in rows]
        return [header(["dense"]), format_row(0, dense, ["dense"])]
    lines = []
    for action in d.mask_one:
        trained = [{**r, "arm": r["criterion"]} for r in rows if r["phase"] == "trained" and r["mask_one"] == action]
        lines += [f"trained, mask-1 {action}, mask-0 {d.mask_zero}:", "  " + header(criteria), "  " + format_row(level, trained, criteria)]
    for weights in d.untrained:
        untrained = [{**r, "arm": r["criterion"]} for r in rows if r["phase"] == "untrained" and r["mask_one"] == weights]
        if untrained:
            lines += [f"untrained supermask ({weights} weights, masks of the mask-1 {d.mask_one[0]} chains):",
                      "  " + format_row(level, untrained, criteria)]
    return lines
