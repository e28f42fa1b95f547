"""`ticketlab report PATH... [--out report.html]`: one self-contained HTML page of every figure of the runs.

Each PATH is a run folder or a sweep folder (a sweep's points are reported as its runs, up to `MAX_POINTS`).
The page needs no network to be viewed: figures are PNGs embedded as base64 `data:` URIs, styles are inline,
and there is no script. It opens with a summary table (one row per run: experiment, status, what differs,
the headline numbers), then one section per experiment kind with its figures, several runs of one kind
overlaid on shared axes (a colour per run, the legend naming the settings in which their specs differ).

Everything is read through the store's checks: a unit's file is used only if its manifest lists it with the
same size and SHA-256 (`store.Unit.read`), never unpickled; an unfinished run shows what its finished units
hold (`report.gather`) and says what is missing. JSON and CSV figures need no torch; the LCA heat map and
per-layer helped/hurt shares (tensors of `lca.safetensors`, of `lca` runs and of lottery runs made with
`--lca true`) and the mask distances of an unfinished early-bird search (`search.safetensors`) import it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..io import CorruptFile
from ..results import cell_value
from ..store import MANIFEST, Unit, open_existing
from . import gather

MAX_POINTS = 8     # a sweep of more points gets its sweep figures only (the points' figures would be unreadable)
MAX_PANELS = 6     # training-curve panels (one per run)
KINDS = ("lottery", "deconstruct", "supermask", "lca", "stability", "earlybird", "forget", "referential", "sparse-train",
         "prune-at-init", "lr-range")
WITH_TICKETS = ("sparse-train", "prune-at-init")   # sections that draw the lottery runs' tickets of the report too


# ------------------------------------------------------------------------------------------- reading
number = cell_value   # a CSV cell as a number where it is one


def flat_spec(record: dict) -> dict:
    spec = record.get("spec") if isinstance(record, dict) else None
    out = {}
    for group in (spec or {}).values():
        if isinstance(group, dict):
            out.update(group)
    return out


class RunFolder:
    """One run folder, read through the store: its spec record, its rows (results.csv, else the finished
    units'), and any unit file on request (checked against the unit's manifest)."""

    def __init__(self, path: Path, record: dict):
        self.path = Path(path)
        self.record = record
        self.kind = record.get("experiment")
        self.label = ""   # what differs from the other runs of its kind (set by `label_runs`)
        self.missing: list[str] = []   # what the page could not show, in words
        rows, self.partial = gather.run_rows(self.path)
        self.rows = [{k: number(v) for k, v in r.items()} for r in rows]
        self._files: dict = {}

    @property
    def name(self) -> str:
        return self.path.name

    def run_file(self, name: str):
        """A run-level file (summary.json, interpolation.csv, ...) if its manifest lists it and it matches."""
        unit = Unit(self.path)
        m = unit.manifest()
        if not m or name not in m["files"]:
            return None
        try:
            return unit.read(name)
        except CorruptFile as e:
            self.missing.append(f"{e} (left out)")
            return None

    def unit_files(self, name: str) -> list[tuple[tuple[str, ...], object]]:
        """(path parts relative to the run, contents) of `name` in every finished unit, in path order."""
        if name in self._files:
            return self._files[name]
        out = []
        for f in sorted(self.path.rglob(name)):
            parts = f.parent.relative_to(self.path).parts
            if not parts or "checkpoint" in parts:
                continue
            unit = Unit(f.parent)
            m = unit.manifest()
            if not m or not m.get("complete") or name not in m["files"]:
                continue
            try:
                out.append((parts, unit.read(name)))
            except CorruptFile as e:
                self.missing.append(f"{e} (left out)")
        self._files[name] = out
        return out

    def units(self) -> tuple[int, int]:
        """(finished units, units with a checkpoint of work in progress)."""
        done = progress = 0
        for m in self.path.rglob(MANIFEST):
            if m.parent == self.path:
                continue
            if m.parent.name == "checkpoint":
                progress += 1
            elif (Unit(m.parent).manifest() or {}).get("complete"):
                done += 1
        return done, progress


class SweepFolder:
    def __init__(self, path: Path, record: dict):
        self.path, self.record = Path(path), record
        self.kind = "sweep"
        self.of = record.get("of")
        self.axes = [a for a in record.get("axes", []) if isinstance(a, str)]
        points = record.get("points")
        if not isinstance(points, list):
            raise UserError(f"{path}: its spec.json lists no points; is it a sweep folder of ticketlab?")
        if (self.path / "results.csv").exists():
            rows, self.partial = gather.run_rows(self.path)
        else:
            rows, self.partial = gather.sweep_rows(self.path, points)
        self.rows = [{k: number(v) for k, v in r.items()} for r in rows]
        self.points = points
        self.missing: list[str] = []
        self.label = ""

    @property
    def name(self) -> str:
        return self.path.name


def open_path(path: str) -> tuple[list[RunFolder], list[SweepFolder]]:
    """The run folders (and sweep folders) a PATH names; UserError for anything else."""
    unit = open_existing(path)
    try:
        record = unit.read("spec.json")
    except CorruptFile as e:
        raise UserError(f"{e}; not a run folder this report can trust (run its command again to rewrite it)") from None
    kind = record.get("experiment") if isinstance(record, dict) else None
    if kind == "sweep":
        sweep = SweepFolder(Path(path), record)
        runs = []
        if len(sweep.points) <= MAX_POINTS:
            for point in sweep.points:
                folder = Path(path).parent / str(point.get("run", ""))
                if (folder / "spec.json").is_file():
                    r, _ = open_path(str(folder))
                    runs += r
                else:
                    sweep.missing.append(f"point {point.get('run')}: its run folder does not exist yet")
        else:
            sweep.missing.append(f"{len(sweep.points)} points: their own figures are left out (more than {MAX_POINTS}); "
                                 f"give point folders to `ticketlab report` to compare them")
        return runs, [sweep]
    if kind not in KINDS:
        raise UserError(f"{path}: experiment {kind!r} in its spec.json is not a kind this report knows; "
                        f"valid: {', '.join(KINDS)}, sweep")
    return [RunFolder(Path(path), record)], []


def label_runs(runs: list[RunFolder]) -> None:
    """Name each run of a kind by the settings in which its spec differs from the others' (hashed settings
    first; then the unhashed ones such as seeds; then the folder name)."""
    for kind in dict.fromkeys(r.kind for r in runs):
        group = [r for r in runs if r.kind == kind]
        if len(group) == 1:
            continue
        specs = [flat_spec(r.record) for r in group]
        keys = list(dict.fromkeys(k for s in specs for k in s))
        hashed = {k for r in group for k in (r.record.get("non_default") or {})}
        differ = [k for k in keys if len({repr(s.get(k)) for s in specs}) > 1]
        chosen = [k for k in differ if k in hashed] or [k for k in differ if k == "seeds"] or differ
        for r, s in zip(group, specs):
            text = ", ".join(f"{k}={_short(s.get(k))}" for k in chosen[:4]) + (" ..." if len(chosen) > 4 else "")
            r.label = text if chosen else r.name
        if len({r.label for r in group}) < len(group):   # same settings (another --out): the folders
            for r in group:
                r.label = f"{r.label} ({r.path.parent.name}/{r.name})" if r.label != r.name else f"{r.path.parent.name}/{r.name}"


def _short(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "{}"
    return str(value)


# ------------------------------------------------------------------------------------------- helpers
def healthy(rows: list[dict]) -> list[dict]:
    return [r for r in rows if str(r.get("diverged", "")).lower() != "true"]


def grouped(rows: list[dict], by: tuple[str, ...], value: str) -> dict[tuple, list[float]]:
    """Values of `value` per group (units that diverged or lack the value left out)."""
    out: dict[tuple, list[float]] = {}
    for r in healthy(rows):
        v = r.get(value)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.setdefault(tuple(r.get(k) for k in by), []).append(float(v))
    return out


def mean_std(values):
    from .figures import mean_std as ms
    return ms(values)


def metric_curves(metrics: list[list[dict]], key: str = "test_accuracy") -> list[tuple[int, float, float]]:
    """Mean and std over seeds of `key` at each step (of the metrics.jsonl of several seeds)."""
    by: dict[int, list[float]] = {}
    for rows in metrics:
        for r in rows:
            v = r.get(key)
            if isinstance(r, dict) and isinstance(v, (int, float)) and isinstance(r.get("step"), int):
                by.setdefault(r["step"], []).append(float(v))
    return [(s, *mean_std(by[s])) for s in sorted(by)]


def seed_of(parts: tuple[str, ...]) -> int | None:
    for p in parts:
        m = re.fullmatch(r"seed-(\d+)", p)
        if m:
            return int(m.group(1))
    return None


def level_of(parts: tuple[str, ...]) -> int | None:
    for p in parts:
        m = re.fullmatch(r"level-(\d+)", p)
        if m:
            return int(m.group(1))
    return None


class Section:
    """One experiment kind's part of the page: figures (title, PNG or None, caption), notes and small tables
    (title, rows)."""

    def __init__(self, title: str):
        self.title = title
        self.figures: list[tuple[str, bytes | None, str]] = []
        self.notes: list[str] = []
        self.tables: list[tuple[str, list[dict]]] = []

    def figure(self, title: str, make: Callable[[], bytes], caption: str = "") -> None:
        """Draw a figure; a figure that cannot be drawn from what the runs hold says so instead of the page failing."""
        try:
            self.figures.append((title, make(), caption))
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, CorruptFile) as e:
            self.figures.append((title, None, f"not drawn: the runs lack what it needs ({type(e).__name__}: {e})"))


def title_of(runs: list[RunFolder]) -> str:
    s = flat_spec(runs[0].record)
    same = all(flat_spec(r.record).get("model") == s.get("model") and flat_spec(r.record).get("dataset") == s.get("dataset")
               for r in runs)
    return f"{s.get('model')} on {s.get('dataset')}" if same else "several models / data sets"


# ----------------------------------------------------------------------------------------- lottery
def per_arm_vs_sparsity(runs: list[RunFolder], metric: str) -> list:
    """[(run label, {arm: [(weights remaining, mean, std, n) per level]}, the dense network's mean)] of a
    lottery-like metric, for `figures.accuracy_vs_sparsity`."""
    data = []
    for r in runs:
        g = grouped(r.rows, ("arm", "level"), metric)
        wr = {(row.get("arm"), row.get("level")): row.get("weights_remaining") for row in r.rows}
        curves: dict[str, list] = {}
        for (arm, level), vals in g.items():
            curves.setdefault(arm, []).append((wr.get((arm, level)), *mean_std(vals), len(vals)))
        dense = g.get(("ticket", 0))
        data.append((r.label, curves, mean_std(dense)[0] if dense else None))
    return data


def lottery_section(runs: list[RunFolder]) -> Section:
    sec = Section("Lottery tickets (iterative magnitude pruning)")
    what = title_of(runs)

    def accuracy():
        from .figures import accuracy_vs_sparsity
        return accuracy_vs_sparsity(per_arm_vs_sparsity(runs, "test_accuracy"), f"{what}: test accuracy vs weights remaining")

    def early():
        data = []
        for r in runs:
            steps = grouped(r.rows, ("arm", "level"), "early_stop_step")
            accs = grouped(r.rows, ("arm", "level"), "early_stop_accuracy")
            wr = {(row.get("arm"), row.get("level")): row.get("weights_remaining") for row in r.rows}
            curves: dict[str, list] = {}
            for key, vals in steps.items():
                curves.setdefault(key[0], []).append((wr.get(key), *mean_std(vals), *mean_std(accs.get(key, []))))
            data.append((r.label, curves))
        from .figures import early_stop
        return early_stop(data, f"{what}: early stopping (the ticket learns faster)")

    sec.figure("Test accuracy vs % weights remaining", accuracy,
               "Mean over seeds (line) and one standard deviation (band); the dense network (level 0) dashed.")
    sec.figure("Early-stop iteration and accuracy vs % weights remaining", early,
               "Iteration of the lowest test loss and the test accuracy there (Frankle & Carbin 2019, Fig. 4 style).")
    sec.figure("Training curves per level", lambda: training_curves_of(runs, "ticket", what),
               "Test accuracy of the winning ticket while it trains, one curve per level (mean over seeds).")
    sec.figure("Per-layer sparsity", lambda: layer_sparsity_of(runs, "ticket", what),
               "Share of each layer's weights the ticket keeps at each level (sparsity.json of the first seed).")
    lca_runs = [r for r in runs if flat_spec(r.record).get("lca") is True]
    if lca_runs:
        lottery_lca_figures(sec, lca_runs, what)
    return sec


def _lca_levels(levels: list[int]) -> list[int]:
    """The levels whose LCA is drawn per layer: the first, the middle and the last."""
    levels = sorted(levels)
    return sorted({levels[0], levels[len(levels) // 2], levels[-1]}) if levels else []


def _level_name(r: RunFolder, level: int) -> str:
    wr = [row.get("weights_remaining") for row in r.rows if row.get("level") == level and isinstance(row.get("weights_remaining"), float)]
    return f"level {level}" + (f" ({100 * wr[0]:.1f}%)" if wr else "")


def lottery_lca_figures(sec: Section, runs: list[RunFolder], what: str) -> None:
    """A lottery run made with `--lca true` records Loss Change Allocation in every unit: the share of parameters
    that helped against % weights remaining (every arm, from the rows), and for the ticket's first, middle and
    last levels the LCA per layer and step and the helped / hurt shares (first seed; the per-layer shares read
    `lca.safetensors`, so import torch)."""
    from .figures import accuracy_vs_sparsity, helped_share, lca_layers

    def helped():
        return accuracy_vs_sparsity(per_arm_vs_sparsity(runs, "lca_fraction_helped"),
                                    f"{what}: parameters helping (LCA < 0) vs weights remaining",
                                    ylabel="% parameters helping (LCA < 0)")

    def steps_by_level(r: RunFolder) -> dict[int, list[tuple[tuple[str, ...], list[dict]]]]:
        by_level = _level_units(r, "lca_steps.csv", "ticket")
        return {level: sorted(((p, [{k: number(v) for k, v in row.items()} for row in t]) for p, t in units
                               if isinstance(t, list) and t), key=lambda u: seed_of(u[0]) or 0)
                for level, units in by_level.items()}

    def layers(r: RunFolder):
        tables = steps_by_level(r)
        data = []
        for level in _lca_levels([lv for lv, units in tables.items() if units]):
            parts, table = tables[level][0]
            names = [c[4:-1] for c in table[0] if c.startswith("lca[")]
            data.append((f"{_level_name(r, level)}, seed {seed_of(parts)}", [row["step"] for row in table],
                         {n: [row[f"lca[{n}]"] for row in table] for n in names}))
        return lca_layers(data, f"{what}: ticket's LCA per layer by level" + (f" ({r.label})" if r.label else ""))

    def shares(r: RunFolder):
        tables = steps_by_level(r)
        data, layer_shares = [], []
        for level in _lca_levels([lv for lv, units in tables.items() if units]):
            by: dict[int, list[float]] = {}
            for _, table in tables[level]:
                for row in table:
                    by.setdefault(row["step"], []).append(float(row["fraction_helped"]))
            steps = sorted(by)
            ms = [mean_std(by[s]) for s in steps]
            data.append((_level_name(r, level), steps, [m for m, _ in ms], [s for _, s in ms]))
            got = unit_helped(Unit(r.path.joinpath(*tables[level][0][0])))
            if got:
                layer_shares.append((_level_name(r, level), got))
        return helped_share(data, layer_shares, f"{what}: ticket's parameters helping and hurting by level"
                            + (f" ({r.label})" if r.label else ""), numbered="level (first, middle, last)")

    sec.figure("LCA: parameters helping vs % weights remaining", helped,
               "Lan et al. 2019 on the tickets (--lca true): share of parameters whose LCA is negative over training "
               "(lca_fraction_helped), mean over seeds with a band of one std, per arm; the dense network dashed.")
    for r in runs[:MAX_PANELS]:
        suffix = f" ({r.label})" if r.label else ""
        sec.figure("LCA per layer and per step by level" + suffix, lambda r=r: layers(r),
                   "The ticket's first, middle and last levels (line style), first finished seed: each layer's share "
                   "of the loss change at each step (left) and summed (right; below zero helps).")
        sec.figure("Helped / hurt shares by level" + suffix, lambda r=r: shares(r),
                   "The ticket's first, middle and last levels: share of parameters whose LCA is negative at each step "
                   "(mean over seeds), and per layer the share whose total LCA helped (blue) or hurt (red), first seed; "
                   "bars numbered by level in that order.")


def _level_units(r: RunFolder, name: str, arm: str) -> dict[int, list[tuple[tuple[str, ...], object]]]:
    """A run's files `name` of the units of `arm` (lottery: ticket; deconstruct: the first cell and the
    dense network), by level."""
    out: dict[int, list] = {}
    cell = None
    for parts, payload in r.unit_files(name):
        if parts[-1] not in (arm, "dense"):
            continue
        if r.kind == "deconstruct" and parts[-1] == "ticket":
            cell = cell or parts[:2]
            if parts[:2] != cell:
                continue
        level = level_of(parts)
        if level is not None:
            out.setdefault(level, []).append((parts, payload))
    return out


def training_curves_of(runs: list[RunFolder], arm: str, what: str) -> bytes:
    from .figures import training_curves

    panels = []
    for r in runs[:MAX_PANELS]:
        by_level = _level_units(r, "metrics.jsonl", arm)
        curves = {}
        for level in sorted(by_level):
            wr = [row.get("weights_remaining") for row in r.rows if row.get("level") == level and isinstance(row.get("weights_remaining"), float)]
            name = f"level {level}" + (f" ({100 * wr[0]:.1f}%)" if wr else "")
            curves[name] = metric_curves([m for _, m in by_level[level] if isinstance(m, list)])
        cell = next((p[:2] for lv in by_level.values() for p, _ in lv if p[-1] == "ticket" and r.kind == "deconstruct"), None)
        panels.append((r.label or r.name + (f" ({'/'.join(cell)})" if cell else ""), curves))
    return training_curves(panels, f"{what}: training curves per level")


def layer_sparsity_of(runs: list[RunFolder], arm: str, what: str) -> bytes:
    from .figures import layer_sparsity

    data = []
    for r in runs:
        layers: dict[str, list] = {}
        for level, units in sorted(_level_units(r, "sparsity.json", arm).items()):
            parts, report = min(units, key=lambda u: seed_of(u[0]) or 0)
            if not isinstance(report, list):
                continue
            kept = sum(x.get("kept", 0) for x in report)
            total = sum(x.get("total", 0) for x in report) or 1
            for x in report:
                layers.setdefault(x["layer"], []).append((kept / total, float(x["density"])))
        data.append((r.label, layers))
    return layer_sparsity(data, f"{what}: kept weights per layer")


# ------------------------------------------------------------------------------------- deconstruct
def deconstruct_rows(r: RunFolder) -> list[dict]:
    """The rows with criterion, mask-1 action and phase: results.csv has them; a finished unit's row of an
    unfinished run is named by its folder (`crit/action/seed-S/level-L/ticket|untrained-W`, `seed-S/level-00/dense`)."""
    out = []
    for row in r.rows:
        if "criterion" in row:
            out.append(row)
            continue
        parts = tuple(str(row.get("unit", "")).split("/"))
        if parts[-1] == "dense":
            out.append({**row, "criterion": "dense", "mask_one": "none", "phase": "trained", "level": 0})
        elif len(parts) == 5:
            phase = "untrained" if parts[-1].startswith("untrained-") else "trained"
            action = parts[-1][len("untrained-"):] if phase == "untrained" else parts[1]
            out.append({**row, "criterion": parts[0], "mask_one": action, "phase": phase,
                        "level": row.get("level", level_of(parts)), "seed": row.get("seed", seed_of(parts))})
    return out


def deconstruct_section(runs: list[RunFolder]) -> Section:
    from .figures import accuracy_vs_sparsity, grid

    sec = Section("Deconstructing lottery tickets (mask criteria x actions)")
    what = title_of(runs)
    rows = {r.name: deconstruct_rows(r) for r in runs}

    def by_criterion(phase: str, action: str):
        data = []
        for r in runs:
            part = [x for x in rows[r.name] if x["phase"] == phase and x["mask_one"] == action and x["criterion"] != "dense"]
            g = grouped(part, ("criterion", "level"), "test_accuracy")
            wr = {(x["criterion"], x.get("level")): x.get("weights_remaining") for x in part}
            curves: dict[str, list] = {}
            dense = grouped([x for x in rows[r.name] if x["criterion"] == "dense"], ("criterion",), "test_accuracy")
            for (crit, level), vals in g.items():
                if phase == "trained" and dense and crit not in curves:   # every chain starts from the dense network
                    curves[crit] = [(1.0, *mean_std(dense[("dense",)]), len(dense[("dense",)]))]
                curves.setdefault(crit, []).append((wr.get((crit, level)), *mean_std(vals), len(vals)))
            data.append((r.label, curves, mean_std(dense[("dense",)])[0] if dense else None))
        return data

    actions = list(dict.fromkeys(x["mask_one"] for rs in rows.values() for x in rs if x["phase"] == "trained" and x["criterion"] != "dense"))
    untrained = list(dict.fromkeys(x["mask_one"] for rs in rows.values() for x in rs if x["phase"] == "untrained"))
    for action in actions:
        sec.figure(f"Mask criteria, mask-1 action {action}",
                   lambda a=action: accuracy_vs_sparsity(by_criterion("trained", a), f"{what}: mask-1 {a}, test accuracy by criterion"),
                   "Zhou et al. 2019 Fig. 2 style: mean over seeds and a band of one std; the dense network dashed.")

    def grids(phase: str):
        panels = []
        for r in runs:
            part = [x for x in rows[r.name] if x["phase"] == phase and x["criterion"] != "dense"]
            crits = list(dict.fromkeys(x["criterion"] for x in part))
            acts = list(dict.fromkeys(x["mask_one"] for x in part))
            g = grouped(part, ("criterion", "mask_one", "level"), "test_accuracy")
            for level in sorted({x["level"] for x in part if isinstance(x.get("level"), int)}):
                wr = [x.get("weights_remaining") for x in part if x.get("level") == level and isinstance(x.get("weights_remaining"), float)]
                values = [[mean_std(g[(c, a, level)])[0] if (c, a, level) in g else None for a in acts] for c in crits]
                name = (f"{r.label}: " if r.label else "") + f"level {level}" + (f" ({100 * wr[0]:.1f}% weights)" if wr else "")
                panels.append((name, crits, acts, values))
        return grid(panels, f"{what}: {'trained tickets' if phase == 'trained' else 'untrained supermasks'}")

    sec.figure("Criteria x mask-1 actions grid", lambda: grids("trained"),
               "Rows: mask criteria; columns: mask-1 actions; one panel per level (and run).")
    for weights in untrained:
        sec.figure(f"Untrained supermasks ({weights} weights)",
                   lambda w=weights: accuracy_vs_sparsity(by_criterion("untrained", w), f"{what}: untrained supermask ({w} weights)"),
                   "Each criterion's mask applied to the untrained init, evaluated without training (Zhou et al. Section 5).")
    if untrained:
        sec.figure("Untrained supermasks grid", lambda: grids("untrained"),
                   "Rows: mask criteria; columns: the untrained weights the masks are applied to.")
    sec.figure("Training curves per level", lambda: training_curves_of(runs, "ticket", what),
               "The dense network and the first (criterion, mask-1 action) cell's tickets while they train.")
    sec.figure("Per-layer sparsity", lambda: layer_sparsity_of(runs, "ticket", what),
               "Kept weights per layer of the first cell's masks at each level (first seed).")
    return sec


# ---------------------------------------------------------------------------------------- supermask
def supermask_section(runs: list[RunFolder]) -> Section:
    from .figures import supermask

    sec = Section("Learned supermasks")
    what = title_of(runs)

    def make():
        data = []
        for r in runs:
            metrics = [m for _, m in r.unit_files("metrics.jsonl") if isinstance(m, list)]
            curves = {"sampled mask": metric_curves(metrics, "test_accuracy")}
            expected = metric_curves(metrics, "expected_mask_accuracy")
            if expected:
                curves["expected mask"] = expected
            data.append((r.label, curves, metric_curves(metrics, "weights_remaining")))
        return supermask(data, f"{what}: learned supermask")

    methods = {str(flat_spec(r.record).get("method")) for r in runs}
    sec.figure("Supermask accuracy and kept weights over training", make,
               f"Method {', '.join(sorted(methods))}: mean over seeds and a band of one std; the sampled mask solid, "
               f"the expected mask sigmoid(score) dashed.")
    return sec


# ---------------------------------------------------------------------------------------------- LCA
def lca_section(runs: list[RunFolder]) -> Section:
    from .figures import helped_share, lca_layers, lca_totals

    sec = Section("Loss Change Allocation (LCA)")
    what = title_of(runs)

    def steps_of(r: RunFolder) -> list[tuple[tuple[str, ...], list[dict]]]:
        return [(p, [{k: number(v) for k, v in row.items()} for row in t]) for p, t in r.unit_files("lca_steps.csv")
                if isinstance(t, list) and t]

    def layers():
        data = []
        for r in runs:
            tables = steps_of(r)
            if not tables:
                continue
            parts, table = tables[0]
            names = [c[4:-1] for c in table[0] if c.startswith("lca[")]
            data.append(((r.label + ", " if r.label else "") + f"seed {seed_of(parts)}",
                         [row["step"] for row in table], {n: [row[f"lca[{n}]"] for row in table] for n in names}))
        return lca_layers(data, f"{what}: LCA per layer")

    def totals():
        data = []
        for r in runs:
            g = grouped(r.rows, ("layer",), "lca") if any("layer" in x for x in r.rows) else {}
            if not g:   # an unfinished run: the seeds' results hold their layer totals
                for x in healthy(r.rows):
                    for layer, v in (x.get("layer_totals") or {}).items():
                        g.setdefault((layer,), []).append(float(v))
            data.append((r.label, {k[0]: mean_std(v) for k, v in g.items()}))
        return lca_totals(data, f"{what}: total LCA per layer")

    def shares():
        data, layer_shares = [], []
        for r in runs:
            tables = steps_of(r)
            by: dict[int, list[float]] = {}
            for _, table in tables:
                for row in table:
                    by.setdefault(row["step"], []).append(float(row["fraction_helped"]))
            if by:
                steps = sorted(by)
                ms = [mean_std(by[s]) for s in steps]
                data.append((r.label, steps, [m for m, _ in ms], [s for _, s in ms]))
            got = per_layer_helped(r)
            if got:
                layer_shares.append((r.label, got))
        return helped_share(data, layer_shares, f"{what}: parameters helping and hurting")

    sec.figure("LCA per layer and per step", layers,
               "Lan et al. 2019: each layer's share of the loss change at each step (left) and summed (right; below "
               "zero helps). First finished seed of each run.")
    sec.figure("Total LCA per layer", totals, "Summed over training, mean over seeds (error bars: std).")
    sec.figure("Helped / hurt shares", shares,
               "Share of parameters whose LCA is negative at each step (mean over seeds), and per layer the share of "
               "parameters whose total LCA helped (blue) or hurt (red), first seed.")
    for r in runs:
        sec.figure("Per-neuron LCA" + (f" ({r.label})" if r.label else ""), lambda r=r: neuron_heatmap(r, what),
                   "Rows: neurons (channels) of one layer; columns: iterations; blue helps, red hurts (first seed; colour "
                   "scale clipped at the 99th percentile of |LCA|).")
    return sec


def _lca_unit(r: RunFolder) -> Unit | None:
    for parts, _ in r.unit_files("lca_layers.json"):
        return Unit(r.path.joinpath(*parts))
    return None


def per_layer_helped(r: RunFolder) -> dict[str, float] | None:
    """Per layer, the share of parameters whose total LCA is negative (from `lca.safetensors`; imports torch)."""
    unit = _lca_unit(r)
    return None if unit is None else unit_helped(unit)


def unit_helped(unit: Unit) -> dict[str, float] | None:
    """Per layer, the share of parameters whose total LCA is negative in one unit's `lca.safetensors`
    (imports torch). A pruned network's weights that its `mask.safetensors` removes (LCA 0) are not counted."""
    m = unit.manifest()
    if not m or "lca.safetensors" not in m["files"]:
        return None
    tensors = unit.read("lca.safetensors")
    mask = unit.read("mask.safetensors") if "mask.safetensors" in m["files"] else {}
    out: dict[str, list] = {}
    for key, t in tensors.items():
        if key.startswith("total."):
            name = key[len("total."):]
            kept = mask.get(name)
            if kept is not None and kept.shape == t.shape:
                t = t[kept.bool()]
            n = out.setdefault(name.rsplit(".", 1)[0], [0, 0])
            n[0] += int((t < 0).sum())
            n[1] += t.numel()
    order = unit.read("lca_layers.json").get("layers", [])
    return {layer: out[layer][0] / max(out[layer][1], 1)
            for layer in sorted(out, key=lambda name: order.index(name) if name in order else len(order))}


def neuron_heatmap(r: RunFolder, what: str) -> bytes:
    """plots.lca_neuron_heatmap of the run's heat-map layer (`--lca-layer`, else the first), first seed."""
    from .plots import lca_neuron_heatmap

    unit = _lca_unit(r)
    if unit is None:
        raise ValueError("no finished seed yet")
    layers = unit.read("lca_layers.json")
    names, sizes = layers["layers"], layers["neurons"]
    layer = flat_spec(r.record).get("lca_layer") or names[0]
    layer = layer if layer in names else names[0]
    neurons = unit.read("lca.safetensors")["neurons"]
    start = sum(sizes[:names.index(layer)])
    return lca_neuron_heatmap(neurons[:, start:start + sizes[names.index(layer)]].numpy(), layer,
                              f"{what}: LCA per neuron of {layer} ({'/'.join(unit.path.relative_to(r.path).parts)})")


# ----------------------------------------------------------------------------------------- stability
def stability_section(runs: list[RunFolder]) -> Section:
    from .figures import barrier, interpolation

    sec = Section("Linear mode connectivity (stability)")
    what = title_of(runs)

    def barriers():
        data = []
        for r in runs:
            g = grouped(r.rows, ("level", "copy_step"), "error_barrier")
            curves: dict[str, list] = {}
            for (level, k), vals in sorted(g.items()):
                wr = [x.get("weights_remaining") for x in r.rows if x.get("level") == level and isinstance(x.get("weights_remaining"), float)]
                name = "dense" if level == 0 else f"ticket level {level}" + (f" ({100 * wr[0]:.1f}%)" if wr else "")
                curves.setdefault(name, []).append((k, *mean_std(vals)))
            data.append((r.label, curves))
        return barrier(data, f"{what}: instability (error barrier)")

    def paths():
        data = []
        for r in runs:
            curves = {}
            first = None
            for parts, rows in r.unit_files("interpolation.csv"):
                if len(parts) != 3 or not isinstance(rows, list):
                    continue
                first = seed_of(parts) if first is None else first
                if seed_of(parts) != first:
                    continue
                rows = [{k: number(v) for k, v in x.items()} for x in rows]
                level = level_of(parts)
                curves[f"{'dense' if level == 0 else f'level {level}'}, k={parts[2][2:]}"] = (
                    [x["alpha"] for x in rows], [x["test_error"] for x in rows])
            data.append((r.label + (f" seed {first}" if r.label and first is not None else ""), curves))
        return interpolation(data, f"{what}: test error along the path (first seed)")

    sec.figure("Error barrier vs rewind step", barriers,
               "Frankle et al. 2020: max test error on the linear path between two copies trained from step k, minus the "
               "mean of its ends; mean over seeds, band of one std; under 2% counts as stable.")
    sec.figure("Error along the interpolation path", paths, "One curve per level and k, first seed.")
    return sec


# ----------------------------------------------------------------------------------------- earlybird
def earlybird_section(runs: list[RunFolder]) -> Section:
    from .figures import curves as curve_plot
    from .figures import earlybird, training_curves

    sec = Section("Early-bird tickets")
    what = title_of(runs)

    def tickets():
        data = []
        for r in runs:
            acc = grouped(r.rows, ("prune_ratio",), "test_accuracy")
            epoch = grouped(r.rows, ("prune_ratio",), "eb_epoch")
            flops = grouped(r.rows, ("prune_ratio",), "flops_vs_full")
            data.append((r.label, [(k[0], *mean_std(v), *mean_std(epoch.get(k, [])), mean_std(flops.get(k, []))[0])
                                   for k, v in acc.items()]))
        return earlybird(data, f"{what}: early-bird tickets")

    sec.figure("Retrained tickets, early-bird epoch and cost per pruning ratio", tickets,
               "You et al. 2020: mean over seeds (error bars: std); the cost counts the search up to the early bird and "
               "the retraining, against full training + pruning + the same retraining.")
    for r in runs:
        sec.figure("Mask distance between epochs" + (f" ({r.label})" if r.label else ""), lambda r=r: distance(r, what),
                   "Normalised Hamming distance between the channel (or weight) masks of every pair of epochs, one panel "
                   "per pruning ratio, first seed; a cross marks the early-bird epoch.")

    def search_curves():
        panels = []
        for r in runs[:MAX_PANELS]:
            curves = {}
            for parts, m in r.unit_files("metrics.jsonl"):
                if parts[-1] == "search" and isinstance(m, list):
                    curves[f"search, seed {seed_of(parts)}"] = metric_curves([m])
                elif parts[-1].startswith("p-") and isinstance(m, list):
                    curves.setdefault(f"ticket {parts[-1]}", [])
            for name in [c for c in curves if c.startswith("ticket ")]:
                ratio = name[len("ticket "):]
                curves[name] = metric_curves([m for p, m in r.unit_files("metrics.jsonl") if p[-1] == ratio and isinstance(m, list)])
            panels.append((r.label or r.name, curves))
        return training_curves(panels, f"{what}: the search and the retrained tickets")

    sec.figure("Training curves: search and retrained tickets", search_curves,
               "Test accuracy of each seed's search (dense network with the BatchNorm penalty) and of each ratio's "
               "retrained ticket (mean over seeds).")

    if any(r.run_file("tickets_by_epoch.csv") for r in runs):
        def by_epoch():
            data = []
            for r in runs:
                rows = [{k: number(v) for k, v in x.items()} for x in (r.run_file("tickets_by_epoch.csv") or [])]
                g = grouped(rows, ("epoch",), "test_accuracy")
                data.append((r.label, {"ticket drawn at epoch": [(k[0], *mean_std(v)) for k, v in sorted(g.items())]}))
            return curve_plot(data, f"{what}: tickets drawn at each epoch", "epoch the ticket is drawn at",
                              "test accuracy after retraining (%)")
        sec.figure("Tickets drawn at every epoch", by_epoch, "Retrained accuracy of the first ratio's ticket drawn at each epoch.")
    return sec


def distance(r: RunFolder, what: str) -> bytes:
    """The mask distance matrices: summary.json of a finished run, else the first finished search's masks
    (imports torch)."""
    from .plots import mask_distance_matrix

    summary = r.run_file("summary.json") if not r.partial else None
    found: dict = {}
    matrices = {}
    if isinstance(summary, dict) and summary.get("mask_distance"):
        matrices = {f"p={k}": v for k, v in summary["mask_distance"].items()}
        seed = (summary.get("seeds") or [None])[0]
        found = (summary.get("search") or {}).get(str(seed), {}).get("found", {})
    else:
        for parts, _ in r.unit_files("result.json"):
            if parts[-1] != "search":
                continue
            unit = Unit(r.path.joinpath(*parts))
            from ..instruments.mask_distance import distance_matrix

            tensors = unit.read("search.safetensors")
            ratios = flat_spec(r.record).get("prune_ratios") or []
            found = unit.read("result.json").get("found", {})
            matrices = {f"p={p:g}": distance_matrix(list(tensors[f"masks.{i}"].unbind(0))).tolist()
                        for i, p in enumerate(ratios) if f"masks.{i}" in tensors}
            seed = seed_of(parts)
            break
        else:
            raise ValueError("no finished search yet")
    marks = {}
    for label in matrices:
        key = label[2:]
        e = next((v for k, v in found.items() if k == key or _same_ratio(k, key)), None)
        marks[label] = e
    return mask_distance_matrix(matrices, f"{what}: mask distance between epochs (seed {seed})", marks)


def _same_ratio(a: str, b: str) -> bool:
    try:
        return math.isclose(float(a), float(b))
    except ValueError:
        return False


# ------------------------------------------------------------------------------- forget, referential
def forget_section(runs: list[RunFolder]) -> Section:
    """Forget-and-relearn, read generically: rows with `method` and `generation` columns (generation 0 is
    `none`, shared by every method; `long` is the same total training in one go)."""
    from .figures import curves

    sec = Section("Forget and relearn")
    what = title_of(runs)
    measures = [m for m in ("test_accuracy", "train_accuracy", "train_accuracy_clean", "train_accuracy_mislabeled",
                            "topographic_similarity") if any(isinstance(x.get(m), (int, float)) for r in runs for x in r.rows)]
    if not any("method" in x and "generation" in x for r in runs for x in r.rows):
        sec.notes.append("no rows with `method` and `generation` columns yet: nothing to draw")
        return sec
    for measure in measures:
        def make(measure=measure):
            data, lines = [], []
            for r in runs:
                rows = [x for x in r.rows if "method" in x and isinstance(x.get("generation"), int)]
                g = grouped(rows, ("method", "generation"), measure)
                start = [(0, *mean_std(v)) for (m, gen), v in g.items() if m == "none"]
                series: dict[str, list] = {}
                for (method, gen), vals in sorted(g.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
                    if method in ("none", "long"):
                        continue
                    series.setdefault(method, list(start)).append((gen, *mean_std(vals)))
                if not series and start:
                    series["generation 0"] = start
                data.append((r.label, series))
                long = [v for (m, _), vals in g.items() if m == "long" for v in vals]
                if long:
                    lines.append(((r.label + ": " if r.label else "") + "long (same total steps)", mean_std(long)[0]))
            scale = 1 if measure == "topographic_similarity" else 100
            return curves(data, f"{what}: {measure.replace('_', ' ')} per generation", "generation",
                          measure.replace("_", " ") + ("" if scale == 1 else " (%)"), scale=scale, hlines=lines)
        sec.figure(f"{measure.replace('_', ' ').capitalize()} per generation", make,
                   "Mean over seeds and a band of one std, a curve per forgetting method from the shared generation 0; "
                   "the long baseline dashed.")
    return sec


def referential_section(runs: list[RunFolder]) -> Section:
    from .figures import curves

    sec = Section("Referential game")
    what = "referential game"
    for measure, scale in (("topographic_similarity", 1), ("accuracy", 100)):
        def make(measure=measure, scale=scale):
            data = []
            for r in runs:
                g = grouped(r.rows, ("arm", "step"), measure)
                series: dict[str, list] = {}
                for (arm, step), vals in sorted(g.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
                    series.setdefault(str(arm), []).append((step, *mean_std(vals)))
                data.append((r.label, series))
            return curves(data, f"{what}: {measure.replace('_', ' ')}", "iterations",
                          measure.replace("_", " ") + ("" if scale == 1 else " (%)"), scale=scale)
        sec.figure(measure.replace("_", " ").capitalize(), make, "Mean over seeds per arm, a band of one std.")
    return sec


# --------------------------------------------------------------------------------------------- sweep
SWEEP_METRICS = {"lottery": ("test_accuracy", "best_accuracy", "early_stop_accuracy"), "deconstruct": ("test_accuracy",),
                 "supermask": ("test_accuracy",), "lca": ("test_accuracy", "relative_error", "fraction_helped"),
                 "stability": ("error_barrier", "test_accuracy"), "earlybird": ("test_accuracy", "flops_vs_full"),
                 "forget": ("test_accuracy",), "referential": ("topographic_similarity", "accuracy"),
                 "sparse-train": ("test_accuracy",), "prune-at-init": ("test_accuracy",),
                 "lr-range": ("suggested_lr", "max_lr")}


# Which rows of a point a sweep draws, per kind: the arm kept (None: every row), the column that steps through
# sparsity within a point (its first and last values are drawn against each axis), and the columns that name
# further curves within a point. Other kinds: the lottery's reading (rows without an arm are kept).
SWEEP_ROWS = {"lottery": ("ticket", "level", ()), "prune-at-init": ("pruned", "density", ("method",)),
              "sparse-train": (None, "density", ("method",))}


def sweep_section(sweep: SweepFolder) -> Section:
    """Sweep curves per axis: each metric against each axis's values, a curve per value of the other axes
    (lottery: the tickets at level 0 and at the deepest level; pruning at init and sparse training: per
    method, at the largest and smallest density), mean over seeds with a band."""
    from .figures import accuracy_vs_sparsity, curves

    sec = Section(f"Sweep {sweep.name} ({sweep.of}, axes: {', '.join(sweep.axes) or '-'})")
    summary = Unit(sweep.path).manifest()
    metrics = None
    if summary and "summary.json" in summary["files"]:
        try:
            metrics = Unit(sweep.path).read("summary.json").get("metrics")
        except CorruptFile:
            metrics = None
    metrics = [m for m in (metrics or SWEEP_METRICS.get(sweep.of, ("test_accuracy",)))
               if any(isinstance(x.get(m), (int, float)) for x in sweep.rows)]
    arm, step, inner = SWEEP_ROWS.get(sweep.of, ("ticket", "level", ()))
    rows = [x for x in sweep.rows if arm is None or x.get("arm", arm) == arm]
    levels = sorted({x[step] for x in rows if isinstance(x.get(step), (int, float)) and not isinstance(x.get(step), bool)})
    keep_levels = sorted({levels[0], levels[-1]}) if levels else [None]
    what = {"ticket": "tickets", "pruned": "pruned networks"}.get(arm, "networks")
    named = lambda keys, values: ", ".join(f"{a}={v}" if a in sweep.axes else str(v) for a, v in zip(keys, values))
    if not sweep.rows:
        sec.notes.append("no finished point yet")
        return sec
    if any(isinstance(x.get("weights_remaining"), float) for x in rows) and step in (rows[0] if rows else {}):
        def vs_sparsity():
            curves_: dict[str, list] = {}
            keys = (*sweep.axes, *inner, step)
            g = grouped(rows, keys, "test_accuracy")
            wr = grouped(rows, keys, "weights_remaining")
            for key, vals in g.items():
                if wr.get(key):
                    curves_.setdefault(named(keys[:-1], key[:-1]), []).append((mean_std(wr[key])[0], *mean_std(vals), len(vals)))
            return accuracy_vs_sparsity([("", curves_, None)], f"{sweep.of} sweep: {what}, test accuracy per point")
        sec.figure("Test accuracy vs % weights remaining, per point", vs_sparsity,
                   f"The {what}{' (no controls)' if arm == 'pruned' else ''} of every point of the sweep" + (f", a curve per point and {', '.join(inner)}" if inner else "")
                   + ", mean over seeds and a band of one std.")
    for metric in metrics:
        for axis in sweep.axes:
            def make(metric=metric, axis=axis):
                others = [a for a in sweep.axes if a != axis]
                values = list(dict.fromkeys(x.get(axis) for x in rows))
                numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
                series: dict[str, list] = {}
                for level in keep_levels:
                    part = [x for x in rows if level is None or x.get(step) == level]
                    g = grouped(part, (axis, *others, *inner), metric)
                    for key, vals in g.items():
                        label = named((*others, *inner), key[1:])
                        if level is not None and len(keep_levels) > 1:   # its weights remaining may differ by point
                            label = (label + ", " if label else "") + f"{step} {level:g}"
                        x = key[0] if numeric else values.index(key[0])
                        series.setdefault(label or metric, []).append((x, *mean_std(vals)))
                for s in series.values():
                    s.sort()
                scale = 100 if "accuracy" in metric or metric == "error_barrier" else 1
                return curves([("", series)], f"{sweep.of} sweep: {metric.replace('_', ' ')} vs {axis}", axis,
                              metric.replace("_", " ") + (" (%)" if scale == 100 else ""), scale=scale,
                              categories=None if numeric else [str(v) for v in values])
            sec.figure(f"{metric.replace('_', ' ').capitalize()} vs {axis}", make,
                       "Mean over seeds and a band of one std, a curve per value of the other axes"
                       + (f", per {', '.join(inner)}" if inner else "")
                       + ("" if len(keep_levels) < 2 else " and per level (dense, deepest)" if step == "level"
                          else f" and per {step} (largest, smallest)") + ".")
    return sec


# ------------------------------------------------------------------------------------ sparse-train
def sparse_train_section(runs: list[RunFolder], tickets: list[RunFolder] = ()) -> Section:
    """GMP, SET and RigL against weights remaining, with the IMP tickets of the lottery runs of the same report
    on the same axes (the one accuracy-vs-sparsity figure of pruning during and after training)."""
    sec = Section("Sparse training (GMP, SET, RigL)")
    what = title_of(runs)

    def accuracy():
        data = []
        for r in runs:
            g = grouped(r.rows, ("method", "density"), "test_accuracy")
            kept = grouped(r.rows, ("method", "density"), "weights_remaining")
            curves: dict[str, list] = {}
            for (method, density), vals in g.items():
                x = mean_std(kept[(method, density)])[0] if kept.get((method, density)) else density
                curves.setdefault(method, []).append((x, *mean_std(vals), len(vals)))
            data.append((r.label, curves, None))
        for r in tickets:
            g = grouped(r.rows, ("arm", "level"), "test_accuracy")
            wr = {(row.get("arm"), row.get("level")): row.get("weights_remaining") for row in r.rows}
            points = [(wr.get(key), *mean_std(vals), len(vals)) for key, vals in g.items() if key[0] == "ticket"]
            dense = g.get(("ticket", 0))
            data.append((r.label or r.name, {"IMP ticket": points}, mean_std(dense)[0] if dense else None))
        from .figures import accuracy_vs_sparsity
        return accuracy_vs_sparsity(data, f"{what}: sparse training" + (" and IMP tickets" if tickets else ""))

    sec.figure("Test accuracy vs % weights remaining", accuracy,
               "Mean over seeds (line) and one standard deviation (band), at the weights remaining each method ended "
               "with; the winning tickets of the lottery runs in this report (IMP) on the same axes, their dense network dashed.")
    return sec


# ----------------------------------------------------------------------------------- prune-at-init
def _ticket_points(r: RunFolder) -> tuple[list, float | None]:
    """A lottery run's winning tickets [(weights_remaining, mean, std, n)] by level, and its dense accuracy."""
    g = grouped(r.rows, ("arm", "level"), "test_accuracy")
    wr = {(row.get("arm"), row.get("level")): row.get("weights_remaining") for row in r.rows}
    dense = g.get(("ticket", 0))
    return [(wr.get(key), *mean_std(vals), len(vals)) for key, vals in g.items() if key[0] == "ticket"], \
        (mean_std(dense)[0] if dense else None)


def compared_run(r: RunFolder) -> Path | None:
    """The lottery run folder a finished prune-at-init run compared with (`--compare`), from its summary.json."""
    summary = r.run_file("summary.json") if not r.partial else None
    run = (summary.get("compare") or {}).get("run") if isinstance(summary, dict) else None
    return Path(run).resolve() if isinstance(run, str) and run else None


def prune_at_init_section(runs: list[RunFolder], tickets: list[RunFolder] = ()) -> Section:
    """SNIP, GraSP, SynFlow, random and magnitude at initialisation against weights remaining, with their controls,
    the IMP tickets the run compared with (`--compare`) and those of the lottery runs of the same report."""
    from .figures import at_init, training_curves

    sec = Section("Pruning at initialisation (SNIP, GraSP, SynFlow, random, magnitude)")
    what = title_of(runs)
    compared = {c for c in (compared_run(r) for r in runs) if c is not None}
    # a lottery run some run compared with is drawn once, as that run's dashed IMP curve
    others = [t for t in tickets if t.path.resolve() not in compared]

    def accuracy():
        data = []
        for r in runs:
            g = grouped(r.rows, ("method", "arm", "density", "level"), "test_accuracy")
            kept = grouped(r.rows, ("method", "arm", "density", "level"), "weights_remaining")
            curves: dict[tuple[str, str], list] = {}
            dense = None
            for (method, arm, density, level), vals in g.items():
                if method == "dense":
                    dense = mean_std(vals)[0]
                    continue
                x = mean_std(kept[(method, arm, density, level)])[0] if kept.get((method, arm, density, level)) else density
                curves.setdefault((method, arm), []).append((x, *mean_std(vals), len(vals)))
            data.append((r.label, curves, dense))
        lines = []
        for t in others:
            points, _ = _ticket_points(t)
            lines.append((t.label or t.name, points))
        return at_init(data, lines, f"{what}: pruning at initialisation" + (" and IMP tickets" if others else ""))

    sec.figure("Test accuracy vs % weights remaining", accuracy,
               "Frankle et al. 2021 Fig. 1 style: mean over seeds (line) and one standard deviation (band) at the weights "
               "remaining of each method's masks, a colour per method; its controls dashed in the method's colour "
               "(reshuffle: each layer's mask permuted, long dashes; reinit: the same mask on a fresh init, short dashes); "
               "the IMP tickets of the lottery run given to --compare dashed black, the dense network a horizontal line, "
               "and the winning tickets of other lottery runs in this report solid grey.")

    def curves_per_method():
        panels = []
        for r in runs:
            by: dict[str, dict[str, list]] = {}
            dense = []
            for parts, m in r.unit_files("metrics.jsonl"):
                if not isinstance(m, list):
                    continue
                if parts[-1] == "dense":
                    dense.append(m)
                elif len(parts) == 4:   # seed-S/METHOD/density-D/ARM
                    by.setdefault(parts[1], {}).setdefault(f"{parts[2][len('density-'):]} {parts[3]}", []).append(m)
            for method, groups in by.items():
                if len(panels) >= MAX_PANELS:
                    break
                name = ", ".join(x for x in (r.label, method) if x)
                curves = {"dense": metric_curves(dense)} if dense else {}
                arms = ("pruned", "reshuffle", "reinit")
                for key in sorted(groups, key=lambda k: (-float(k.split()[0]), arms.index(k.split()[1])
                                                         if k.split()[1] in arms else len(arms), k)):
                    curves[f"{100 * float(key.split()[0]):g}% {key.split()[1]}"] = metric_curves(groups[key])
                panels.append((name, curves))
        if not panels:
            raise ValueError("no finished unit with metrics.jsonl yet")
        return training_curves(panels, f"{what}: training curves per method")

    sec.figure("Training curves per method", curves_per_method,
               f"Test accuracy while each unit trains, mean over seeds, a panel per method (up to {MAX_PANELS}): the dense "
               "network and each density's pruned network and controls.")
    return sec


# ---------------------------------------------------------------------------------------- lr-range
def _geomean(values) -> float | None:
    values = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def lr_suggestions(r: RunFolder) -> dict:
    """The run's suggested rates: its summary.json (the geometric means over seeds), else those of its finished seeds."""
    summary = r.run_file("summary.json") if not r.partial else None
    if isinstance(summary, dict) and summary.get("min_lr"):
        return {k: summary.get(k) for k in ("suggested_lr", "min_lr", "max_lr")}
    return {k: _geomean(x.get(k) for x in r.rows) for k in ("suggested_lr", "min_lr", "max_lr")}


def lr_range_section(runs: list[RunFolder]) -> Section:
    from .figures import lr_range

    sec = Section("LR range test")
    what = title_of(runs)

    def make():
        data = []
        for r in runs:
            seeds = {}
            for parts, rows in r.unit_files("curve.jsonl"):
                if isinstance(rows, list):
                    seeds[seed_of(parts)] = [(number(x.get("lr")), number(x.get("loss")), number(x.get("smoothed_loss")))
                                             for x in rows if isinstance(x, dict) and isinstance(number(x.get("lr")), (int, float))]
            data.append((r.label, seeds, lr_suggestions(r)))
        return lr_range(data, f"{what}: LR range test")

    sec.figure("Loss vs learning rate", make,
               "Smith 2017: training loss while the rate rises each step, smoothed (bias-corrected moving average, line) "
               "and raw (faint), one curve per seed up to where the smoothed loss diverged; vertical lines at the "
               "suggested min_lr (steepest descent, dashed) and max_lr (lowest smoothed loss, dotted), the geometric "
               "means over seeds of summary.json.")
    table = []
    for r in runs:
        for x in sorted(r.rows, key=lambda x: str(x.get("seed"))):
            table.append({"run": r.label or r.name, "seed": x.get("seed"), "optimizer": x.get("optimizer"),
                          "suggested_lr": x.get("suggested_lr"), "min_lr": x.get("min_lr"), "max_lr": x.get("max_lr"),
                          "stopped_early": x.get("stopped_early"), "steps_run": x.get("steps_run")})
        if len(r.rows) > 1 or r.partial:
            table.append({"run": r.label or r.name, "seed": "geometric mean" + (" (finished seeds)" if r.partial else ""),
                          **lr_suggestions(r)})
    if table:
        sec.tables.append(("Suggested learning rates", table))
    return sec


# -------------------------------------------------------------------------------------------------- FOP
def fop_section(runs: list[RunFolder]) -> Section | None:
    """The learned preconditioners of runs trained with --optimizer fop-*: each layer's scale (trace(P) / k)
    while training, from the metrics rows of each run's first unit (mean over its seeds). None: no such run."""
    from .figures import training_curves

    fop = [r for r in runs if str(flat_spec(r.record).get("optimizer", "")).startswith("fop-")]
    if not fop:
        return None
    sec = Section("FOP preconditioners")

    def scales():
        panels = []
        for r in fop[:MAX_PANELS]:
            units = sorted(((p, m) for p, m in r.unit_files("metrics.jsonl")
                            if isinstance(m, list) and any(isinstance(row, dict) and "fop_scale" in row for row in m)),
                           key=lambda unit: unit[0])
            if not units:
                continue
            first = units[0][0][1:]   # the first unit's path below its seed: the same unit of every seed
            seeds = [m for p, m in units if p[1:] == first]
            layers = dict.fromkeys(name for m in seeds for row in m if isinstance(row, dict)
                                   for name in (row.get("fop_scale") or {}))
            curves = {name: metric_curves([[{"step": row.get("step"), "v": (row.get("fop_scale") or {}).get(name)}
                                             for row in m if isinstance(row, dict)] for m in seeds], "v")
                      for name in layers}
            panels.append((f"{r.label or r.name} ({'/'.join(first) or 'unit'})", curves))
        if not panels:
            raise ValueError("no unit has finished an evaluation with FOP yet")
        return training_curves(panels, f"{title_of(fop)}: FOP preconditioner scale per layer", ylabel="trace(P) / k", scale=1)

    sec.figure("Preconditioner scale per layer", scales,
               "How much each layer's learned preconditioner P = M M^T scales the base optimizer's step (its mean "
               "eigenvalue; 1 at the start), while the run's first unit trains, mean over seeds with a band.")
    return sec


SECTIONS = {"lottery": lottery_section, "deconstruct": deconstruct_section, "supermask": supermask_section,
            "lca": lca_section, "stability": stability_section, "earlybird": earlybird_section,
            "forget": forget_section, "referential": referential_section,
            "sparse-train": sparse_train_section, "prune-at-init": prune_at_init_section,
            "lr-range": lr_range_section}


# ----------------------------------------------------------------------------------------- summary
def headline(r: RunFolder) -> str:
    """The run's main numbers in a few words."""
    rows, pct = r.rows, lambda v: f"{100 * v:.2f}%"
    try:
        if r.kind == "lottery":
            g = grouped(rows, ("arm", "level"), "test_accuracy")
            dense = g.get(("ticket", 0))
            deepest = max((k[1] for k in g if k[0] == "ticket"), default=None)
            wr = [x.get("weights_remaining") for x in rows if x.get("level") == deepest and x.get("arm") == "ticket"]
            parts = [f"dense {pct(mean_std(dense)[0])}" if dense else ""]
            if deepest:
                parts.append(f"ticket at {100 * wr[0]:.1f}% weights {pct(mean_std(g[('ticket', deepest)])[0])}"
                             + "".join(f", {a} {pct(mean_std(v)[0])}" for (a, lv), v in g.items() if lv == deepest and a != "ticket"))
            return "; ".join(p for p in parts if p)
        if r.kind == "sparse-train":
            g = grouped(rows, ("method", "density"), "test_accuracy")
            return "; ".join(f"{m} at {100 * d:g}% weights {pct(mean_std(v)[0])}" for (m, d), v in g.items())
        if r.kind == "prune-at-init":
            g = grouped([x for x in rows if x.get("arm") in ("pruned", "dense")], ("method", "density"), "test_accuracy")
            dense = g.pop(("dense", 1.0), None)
            return "; ".join([f"dense {pct(mean_std(dense)[0])}"] * bool(dense)
                             + [f"{m} at {100 * d:g}% weights {pct(mean_std(v)[0])}" for (m, d), v in g.items()])
        if r.kind == "lr-range":
            s = lr_suggestions(r)
            return (f"suggested lr {s['suggested_lr']:.3g}, range {s['min_lr']:.3g} to {s['max_lr']:.3g}"
                    + (" (geometric mean over seeds)" if len(rows) > 1 else "")) if s.get("max_lr") else ""
        if r.kind == "supermask":
            acc = grouped(rows, (), "test_accuracy").get((), [])
            kept = grouped(rows, (), "weights_remaining").get((), [])
            return f"test accuracy {pct(mean_std(acc)[0])} with {pct(mean_std(kept)[0])} weights kept" if acc else ""
        if r.kind == "lca":
            fh = [x.get("fraction_helped") for x in healthy(rows) if isinstance(x.get("fraction_helped"), float)]
            err = [x.get("relative_error") for x in healthy(rows) if isinstance(x.get("relative_error"), float)]
            return (f"{pct(mean_std(fh)[0])} of parameters help per step; relative error {mean_std(err)[0]:.1e}") if fh else ""
        if r.kind == "stability":
            g = grouped(rows, ("level", "copy_step"), "error_barrier")
            return "; ".join(f"level {lv} k={k}: barrier {pct(mean_std(v)[0])}" for (lv, k), v in sorted(g.items())[:6])
        if r.kind == "earlybird":
            g = grouped(rows, ("prune_ratio",), "test_accuracy")
            e = grouped(rows, ("prune_ratio",), "eb_epoch")
            return "; ".join(f"p={k[0]:g}: epoch {mean_std(e.get(k, []))[0]:.1f}, retrained {pct(mean_std(v)[0])}" for k, v in g.items())
        if r.kind == "deconstruct":
            g = grouped(deconstruct_rows(r), ("criterion", "mask_one", "phase", "level"), "test_accuracy")
            trained = {k: v for k, v in g.items() if k[2] == "trained" and k[0] != "dense"}
            if not trained:
                return ""
            deepest = max(k[3] for k in trained)
            best = max((k for k in trained if k[3] == deepest), key=lambda k: mean_std(trained[k])[0])
            dense = g.get(("dense", "none", "trained", 0))
            return (f"dense {pct(mean_std(dense)[0])}; " if dense else "") + \
                f"best at level {deepest}: {best[0]} / {best[1]} {pct(mean_std(trained[best])[0])}"
        if r.kind == "forget":
            g = grouped(rows, ("method", "generation"), "test_accuracy")
            last: dict = {}
            for (m, gen), v in g.items():
                if gen is not None and (m not in last or gen > last[m][0]):
                    last[m] = (gen, v)
            return "; ".join(f"{m} gen {gen}: {pct(mean_std(v)[0])}" for m, (gen, v) in last.items())
    except (KeyError, TypeError, ValueError, IndexError):
        return ""
    return ""


def status(r) -> str:
    if not r.partial:
        return "finished"
    if isinstance(r, SweepFolder):
        return f"unfinished: {len(r.rows)} rows of finished points"
    done, progress = r.units()
    return f"unfinished: {done} units finished" + (f", {progress} in progress" if progress else "")


def missing_notes(r: RunFolder) -> list[str]:
    notes = list(dict.fromkeys(r.missing))
    if r.partial:
        done, progress = r.units()
        notes.insert(0, f"results.csv and summary.json are not written yet (the run is unfinished or was killed): "
                        f"the figures show its {done} finished units only"
                        + (f"; {progress} units are in progress (a checkpoint)" if progress else "")
                        + "; run the same command again to finish it")
        if not r.rows:
            notes.insert(1, "no finished unit yet: nothing to draw")
    return notes


# -------------------------------------------------------------------------------------------- page
CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-bottom: .3em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
figure { margin: 1em 0 2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
.hover { position: relative; display: inline-block; max-width: 100%; } .hover img { display: block; }
.hover svg { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
.hover circle { fill: #000; fill-opacity: 0; } .hover circle:hover { fill-opacity: .25; }
figcaption { font-size: .85em; color: #555; max-width: 900px; }
.missing { background: #fff4e5; border-left: 4px solid #f0a030; padding: .5em 1em; margin: .5em 0; font-size: .9em; }
.notdrawn { color: #a33; font-size: .9em; }
details { margin: .5em 0 1em 0; } summary { cursor: pointer; color: #336; }
code { background: #f5f5f5; padding: 0 .2em; }
"""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def img(png: bytes, alt: str) -> str:
    """The figure, and over it its data points (`plots.hover_points`, carried in the PNG) as transparent
    circles of an SVG that scales with the image: resting the pointer on a point shows its values."""
    tag = f'<img alt="{esc(alt)}" title="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    size, points = png_hover(png)
    if not points:
        return tag
    circles = "".join(f'<circle cx="{x:g}" cy="{y:g}" r="7"><title>{esc(text)}</title></circle>' for x, y, text in points)
    return (f'<div class="hover">{tag}<svg viewBox="0 0 {size[0]} {size[1]}" preserveAspectRatio="none" '
            f'aria-hidden="true">{circles}</svg></div>')


def png_hover(png: bytes) -> tuple[tuple[int, int], list]:
    """((width, height), hover points) of a PNG written by `plots._png`; no points for any other PNG or a
    malformed text chunk (the figure is then shown without them)."""
    from PIL import Image   # matplotlib's own dependency

    from .plots import HOVER_KEY

    try:
        with Image.open(io.BytesIO(png)) as im:   # reads the header and the text chunks before the pixels
            size, text = im.size, im.info.get(HOVER_KEY)
    except (OSError, SyntaxError, ValueError):
        return (0, 0), []
    try:
        points = json.loads(text) if isinstance(text, str) else []
    except ValueError:
        return size, []
    ok = isinstance(points, list) and all(isinstance(p, list) and len(p) == 3 and isinstance(p[2], str)
                                          and all(isinstance(v, (int, float)) for v in p[:2]) for p in points)
    return size, points if ok else []


def rows_table(rows: list[dict], limit: int = 200) -> str:
    columns = list(dict.fromkeys(k for r in rows[:limit] for k in r if not isinstance(r.get(k), (list, dict))))
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
    body = "".join("<tr>" + "".join(f"<td>{esc(cell(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows[:limit])
    more = f"<p>({len(rows) - limit} more rows not shown)</p>" if len(rows) > limit else ""
    return f"<table><tr>{''.join(f'<th>{esc(c)}</th>' for c in columns)}</tr>{body}</table>{more}"


def render(paths: list[str]) -> str:
    """The page for run or sweep folders `paths` (UserError for a path that is neither)."""
    runs, sweeps = [], []
    seen = set()
    for p in paths:
        r, s = open_path(p)
        for x in r:
            if x.path.resolve() not in seen:
                seen.add(x.path.resolve())
                runs.append(x)
        sweeps += s
    label_runs(runs)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>ticketlab report</title>", f"<style>{CSS}</style></head><body>",
           "<h1>ticketlab report</h1>",
           f"<p>{len(runs)} run folder(s){f' and {len(sweeps)} sweep(s)' if sweeps else ''}; made "
           f"{esc(time.strftime('%Y-%m-%d %H:%M'))}. Every figure is embedded: the page needs no network.</p>",
           '<h2 id="summary">Summary</h2>', "<table><tr><th>#</th><th>run folder</th><th>experiment</th><th>status</th>"
           "<th>differs in / settings</th><th>seeds</th><th>result</th></tr>"]
    for i, r in enumerate([*sweeps, *runs], start=1):
        if isinstance(r, SweepFolder):
            what, settings, seeds, result = f"sweep of {r.of}", ", ".join(r.axes), "", f"{len(r.points)} points, {len(r.rows)} rows"
        else:
            nd = r.record.get("non_default") or {}
            settings = r.label if r.label and r.label != r.name else ", ".join(f"{k}={_short(v)}" for k, v in nd.items())
            what, seeds, result = r.kind, _short(flat_spec(r.record).get("seeds", "")), headline(r)
        out.append(f"<tr><td>{i}</td><td><code>{esc(r.path)}</code></td><td>{esc(what)}</td><td>{esc(status(r))}</td>"
                   f"<td>{esc(settings)}</td><td>{esc(seeds)}</td><td>{esc(result)}</td></tr>")
    out.append("</table>")
    notes = [(r, missing_notes(r)) for r in runs] + [(s, list(s.missing)) for s in sweeps]
    for r, lines in notes:
        if lines:
            out.append(f'<div class="missing"><b>{esc(r.name)}</b>: missing or left out<ul>'
                       + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul></div>")
    sections: list[Section] = [sweep_section(s) for s in sweeps]
    for kind in KINDS:
        group = [r for r in runs if r.kind == kind]
        if group:
            sections.append(SECTIONS[kind](group) if kind not in WITH_TICKETS
                            else SECTIONS[kind](group, [r for r in runs if r.kind == "lottery"]))
    if (fop := fop_section(runs)) is not None:
        sections.append(fop)
    for k, sec in enumerate(sections):
        out.append(f'<h2 id="section-{k}">{esc(sec.title)}</h2>')
        for note in sec.notes:
            out.append(f'<p class="missing">{esc(note)}</p>')
        for title, png, caption in sec.figures:
            out.append(f"<figure><h3>{esc(title)}</h3>")
            out.append(img(png, title) if png else f'<p class="notdrawn">{esc(caption)}</p>')
            if png and caption:
                out.append(f"<figcaption>{esc(caption)}</figcaption>")
            out.append("</figure>")
        for title, rows in sec.tables:
            out.append(f"<h3>{esc(title)}</h3>{rows_table(rows)}")
    for r in [*sweeps, *runs]:
        if r.rows:
            out.append(f"<details><summary>Rows of {esc(r.name)} ({len(r.rows)}{', finished units only' if r.partial else ''})"
                       f"</summary>{rows_table(r.rows)}</details>")
    out.append("</body></html>")
    return "\n".join(out)


def write(paths: list[str], out: str = "report.html") -> Path:
    """Write the report of `paths` to `out`; returns its path."""
    from ..io import atomic_write_text

    page = render(paths)
    target = Path(out)
    if target.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {Path(out) / 'report.html'}")
    atomic_write_text(target, page)
    return target
