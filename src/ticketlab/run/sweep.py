"""Sweeps: one experiment over a grid of settings, every point an ordinary run folder, all points' units
in one task graph.

The file (TOML; other tools may write it):

    experiment = "lottery"        # any subcommand that trains
    [base]                        # settings as in that experiment's --config (flat or grouped)
    steps = "300it"
    [grid]                        # every combination of these lists (the first axis varies slowest)
    random_labels = [0.0, 0.1]
    [zip]                         # optional: lists of equal length, taken together
    lr = [1e-3, 5e-3]
    batch_size = [60, 100]

Points are `grid x zip`. A point's spec is `[base]`, then the command line's flags, then its axis values;
its run folder is named by the same hash rule as a single run, so re-running a sweep reads finished
points back and adding an axis value reuses the others. Everything is checked (every point's spec
built) before anything is written. [base] and the axis values are typed as in a config file (strictly:
`levels = "2"` is refused) and the file is read with the same size cap.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from .. import spec as specs
from ..errors import UserError

MAX_FILE_BYTES = specs.MAX_FILE_BYTES
SECTIONS = ("experiment", "preset", "base", "grid", "zip")


@dataclass
class Sweep:
    path: Path
    experiment: str
    axes: list[str]
    points: list[dict]      # axis name -> value (JSON-ready), one per point
    specs: list             # the spec of each point

    def folder_name(self) -> str:
        payload = json.dumps({"experiment": self.experiment, "axes": self.axes,
                              "points": [specs.spec_hash(s) for s in self.specs]}, sort_keys=True)
        return f"sweep-{self.experiment}-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


def read_file(path: str | Path) -> dict:
    """The sweep file's TOML, read as a config file is (`spec.read_toml`: size cap, one-line errors)."""
    return specs.read_toml(path, "sweep file", "a TOML file; see examples/")


def load(path: str | Path, spec_classes: dict[str, type], overrides: dict[str, str] | None = None,
         preset: str | None = None) -> Sweep:
    """Parse and check a sweep file; `overrides` are command-line flags (setting name -> text). A
    `preset = "NAME"` at the top of the file or in [base] (`preset`: a --preset flag, which replaces it)
    applies under [base]."""
    path = Path(path)
    doc = read_file(path)
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)}; a sweep file has: experiment, preset, [base], [grid], [zip]")
    name = doc.get("experiment")
    if not isinstance(name, str) or name not in spec_classes:
        raise UserError(f"{path}: experiment = {name!r} is not an experiment; valid: {', '.join(sorted(spec_classes))}")
    cls = spec_classes[name]
    table = {s.name: s for s in specs.settings_of(cls)}
    base, grid, zipped = (doc.get(k, {}) for k in ("base", "grid", "zip"))
    for section, value in (("base", base), ("grid", grid), ("zip", zipped)):
        if not isinstance(value, dict):
            raise UserError(f"{path}: [{section}] must be a table of settings, got {type(value).__name__}")
    axes = list(grid) + list(zipped)
    for section, values in (("grid", grid), ("zip", zipped)):
        for axis, items in values.items():
            _check_axis(path, section, axis, items, table)
    both = sorted(set(grid) & set(zipped))
    if both:
        raise UserError(f"{path}: {', '.join(both)} is in both [grid] and [zip]; an axis belongs to one of them")
    lengths = {len(v) for v in zipped.values()}
    if len(lengths) > 1:
        raise UserError(f"{path}: the [zip] lists must have equal lengths, got "
                        + ", ".join(f"{k}: {len(v)}" for k, v in zipped.items()))
    overrides = dict(overrides or {})
    clash = sorted(set(overrides) & set(axes))
    if clash:
        raise UserError(f"{path}: {', '.join(clash)} is an axis of this sweep; give it in the file or on the command line, not both")
    if "preset" in doc:
        if "preset" in base:
            raise UserError(f"{path}: preset is given twice, at the top and under [base]; give it once")
        base = {"preset": doc["preset"], **base}
    base_spec = specs.from_mapping(cls, base, f"{path} [base]", strict=True, preset=preset)
    if overrides:
        parsed = {n: table[n].parse(text, table[n].flag) for n, text in overrides.items()}
        base_spec = specs.replace(base_spec, **parsed)
    rows = list(zip(*zipped.values())) if zipped else [()]
    points, built = [], []
    for combo in itertools.product(*grid.values()):
        for zrow in rows:
            values = dict(zip(list(grid) + list(zipped), list(combo) + list(zrow)))
            where = f"{path} point {', '.join(f'{k}={v!r}' for k, v in values.items())}"
            coerced = {k: table[k].coerce(v, f"{where}: {k}", strict=True) for k, v in values.items()}
            try:
                point_spec = specs.replace(base_spec, **coerced)
            except UserError as e:
                raise UserError(f"{where}: {e}") from None
            points.append({k: table[k].kind.to_json(v) for k, v in coerced.items()})
            built.append(point_spec)
    return Sweep(path, name, axes, points, built)


def _check_axis(path: Path, section: str, axis: str, items, table: dict) -> None:
    if axis not in table:
        raise UserError(f"{path}: [{section}] {axis!r} is not a setting of this experiment; valid: {', '.join(sorted(table))}")
    if axis == "seeds":
        raise UserError(f"{path}: [{section}] seeds cannot be an axis: every point runs all its seeds as units; "
                        f"put seeds = [...] in [base] or give --seeds")
    if not table[axis].hashed:
        raise UserError(f"{path}: [{section}] {axis} does not change results (it is not part of a run's identity); "
                        f"an axis must be a setting that does")
    if not isinstance(items, list):
        raise UserError(f"{path}: [{section}] {axis} must be a list of values, got {items!r}")
    if not items:
        raise UserError(f"{path}: [{section}] {axis} is empty; give at least one value")


# ------------------------------------------------------------------------------------------------- run
def experiment_class(name: str):
    """The `Experiment` subclass of an experiment module (`ticketlab.experiments.<name>.EXPERIMENT`, a hyphen of
    the command's name an underscore: prune-at-init's module is prune_at_init)."""
    import importlib
    return importlib.import_module(f"ticketlab.experiments.{name.replace('-', '_')}").EXPERIMENT


def run(sweep: Sweep, *, out: str = "runs", force: bool = False, progress: bool | None = None, wait: bool = False):
    """Run (or resume) every point in one task graph; write the sweep folder; return its rows. Every
    point's run folder is locked while it runs (`wait`: wait for another command holding one)."""
    from ..errors import os_fault
    from ..results import Results
    from ..store import Run, Unit
    from . import runner

    runner.check_out(out)
    runner.require_extras(sweep.specs[0])   # --tensorboard without TensorBoard: before any data is loaded
    cls = experiment_class(sweep.experiment)
    experiments = []   # everything validated before the first file
    for point, spec in zip(sweep.points, sweep.specs):
        try:
            experiments.append(cls.build(spec))
        except UserError as e:   # checks that need the data or the model: name the point
            where = ", ".join(f"{k}={v!r}" for k, v in point.items())
            raise UserError(f"{sweep.path} point {where}: {e}") from None
    folder = Unit(Path(out) / sweep.folder_name())
    index = [{**point, "run": Run.folder(out, spec).name} for point, spec in zip(sweep.points, sweep.specs)]
    try:   # written first: `ticketlab show` of a sweep still running (or killed) gathers its points' rows
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.write("spec.json", {"experiment": "sweep", "of": sweep.experiment, "file": str(sweep.path),
                                   "axes": sweep.axes, "points": index})
        (folder.path / "results.csv").unlink(missing_ok=True)   # the points may change: until all of them are done
    except OSError as e:
        raise os_fault(e) from None
    results = runner.run_many(experiments, out=out, force=force, progress=progress, wait=wait)
    rows = []
    for point, res in zip(sweep.points, results):
        rows += [{**point, **r} for r in res.rows]
    folder.write("results.csv", rows)
    folder.write("results.json", rows)
    folder.write("summary.json", {"experiment": "sweep", "of": sweep.experiment, "axes": sweep.axes,
                                  "points": index, "metrics": list(cls.metrics)})
    for metric in cls.metrics:
        png = sweep_plot(rows, sweep.axes, metric, f"{sweep.experiment} sweep ({sweep.path.name})")
        if png is not None:
            folder.write(f"{metric}.png", png)
    return Results(rows), folder.path


def sweep_plot(rows: list[dict], axes: list[str], metric: str, title: str) -> bytes | None:
    """`metric` (mean over seeds, error bars: std) against weights remaining where the rows have it (one
    curve per point; for the lottery experiment the tickets only), else against the first axis (one curve
    per value of the other axes)."""
    from ..report import plots
    from ..results import is_diverged

    if any("arm" in r for r in rows):
        rows = [r for r in rows if r.get("arm") == "ticket"]
        title += ", tickets"
    lost = sum(is_diverged(r) for r in rows)   # diverged units have no value: left out, and the title says so
    rows = [r for r in rows if not is_diverged(r) and r.get(metric) not in (None, "")]
    title += f" ({lost} diverged, not shown)" if lost else ""
    if not rows:
        return None
    if "weights_remaining" in rows[0]:
        x, curves_by = "weights_remaining", axes
    else:
        x, curves_by = axes[0], axes[1:]
    series: dict[str, dict] = {}
    for r in rows:
        label = ", ".join(f"{a}={r[a]}" for a in curves_by) or metric
        series.setdefault(label, {}).setdefault(r[x], []).append(float(r[metric]))
    return plots.sweep_curves(series, x, metric, title, log_x=x == "weights_remaining")
