"""What an experiment declares: its units of work and how each is computed, stored and summarised.

A unit is one piece of resumable work with its own folder in the store: a training (a `Job`, which the
runner may stack with others of the same `group`) or a direct computation (a dict of files). The runner
owns everything around it (is it done? corrupt? commit atomically, clear checkpoints, progress,
parallelism); an experiment subclass only says what the units are and how they depend on each other.

Divergence is the runner's too (`run/execute.py`): a training whose loss became non-finite is committed
as diverged (its result: `describe(key, job)`, the fit's summary with null metrics, `diverged: true`,
`diverged_step`, `diverged_reason`; no weights), and a unit whose dependency diverged is committed as
diverged without being prepared ("depends on a diverged unit: ..."), so no unit ever starts from NaN
weights and a resume never retrains either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Hashable

from ..store import Run, Unit


@dataclass(frozen=True)
class Work:
    """One unit of an experiment's task graph.

    `deps` are keys of this experiment, or `(other_experiment, key)` pairs for units of an experiment this
    one builds on (`Experiment.children`). Units with equal, non-None `group` may train as one stacked model.
    `cost` is the unit's training iterations (progress bars and the work estimate)."""

    key: Hashable
    deps: tuple = ()
    group: Hashable = None
    cost: int = 1
    label: str = ""


@dataclass
class Report:
    """What an experiment's results come to: the tidy rows (`results.csv` / `results.json`), the summary
    (`summary.json`) and any further files (plots, extra tables), all written by the runner."""

    rows: list[dict]
    summary: dict
    files: dict[str, Any] = field(default_factory=dict)


class Experiment:
    """The science of one experiment. Subclasses set `name` and implement `units`, `unit_of`, `prepare`
    (and `finish` for units that train) and `report`.

    Construction validates everything and writes nothing; the runner then opens the run folder (`attach`).
    Worker processes and Ray tasks rebuild the experiment from `(class, spec, out)` (`ref`)."""

    name: ClassVar[str] = "experiment"
    metrics: ClassVar[tuple[str, ...]] = ("test_accuracy",)   # what a sweep plots
    stack_limit: int = 0   # 1: its units never stack (an instrument watching one model), so nothing in its graph does

    def __init__(self, spec, setup):
        self.spec, self.setup = spec, setup
        self.run: Run | None = None
        self.out: str | None = None

    # ----------------------------------------------------------------------------------- declarations
    def units(self) -> list[Work]:
        raise NotImplementedError

    def unit_of(self, key) -> Unit:
        """The store folder of a unit."""
        raise NotImplementedError

    def prepare(self, key):
        """A `train.jobs.Job` to train, a dict of files (computed directly), or a callable
        `(progress) -> files` for work with its own loop. Called only for units not yet done."""
        raise NotImplementedError

    def finish(self, key, job, fitted, seconds: float) -> dict:
        """The files of a trained unit (`result.json` included)."""
        raise NotImplementedError

    def result_of(self, key, unit: Unit) -> dict:
        """A finished unit's result, read back."""
        return unit.read("result.json")

    def describe(self, key, job=None) -> dict:
        """What places a unit's result in the report (seed, level, arm, ...) for a unit recorded as diverged,
        whose files `finish` does not write: `job` is its training, None when it never trained (a unit it
        depends on diverged). Experiments whose report reads more than `diverged` from such a result say so here."""
        return {}

    def dependencies(self, key) -> list[tuple["Experiment", Any]]:
        """The units `key` depends on, as (experiment, key) pairs (its `Work.deps`, resolved)."""
        deps = getattr(self, "_deps_by_key", None)
        if deps is None:
            deps = self._deps_by_key = {w.key: w.deps for w in self.units()}
        return [d if isinstance(d, tuple) and len(d) == 2 and isinstance(d[0], Experiment) else (self, d)
                for d in deps.get(key, ())]

    def unit_name(self, key) -> str:
        """A unit's folder relative to the parent of the run folders (`lottery-<hash>/seed-0/level-01/ticket`)."""
        path = self.unit_of(key).path
        try:
            return path.relative_to(self.run.path.parent).as_posix()
        except (AttributeError, ValueError):
            return str(path)

    def report(self, results: dict) -> Report:
        raise NotImplementedError

    # --------------------------------------------------------------------------------------- optional
    def children(self) -> list["Experiment"]:
        """Experiments whose units this one depends on (each keeps its own run folder and report)."""
        return []

    def progress_lines(self, key, result: dict, done: dict) -> list[str]:
        """Lines to print once unit `key` finishes (`done`: every result so far, by key)."""
        return []

    def header_lines(self) -> list[str]:
        return []

    def check_folder(self, run: Run) -> None:
        """Refuse a run folder left by an incompatible earlier version (raise UserError)."""

    # --------------------------------------------------------------------------------------- plumbing
    def attach(self, run: Run, out: str) -> None:
        self.check_folder(run)
        self.run, self.out = run, out

    @property
    def ref(self) -> tuple:
        """How another process rebuilds this experiment: (class, spec, out)."""
        return (type(self), self.spec, self.out)

    @classmethod
    def build(cls, spec) -> "Experiment":
        from ..experiments.common import Setup
        return cls(spec, Setup.prepare(spec))

    def train_settings(self):
        """The TrainSpec its jobs train with."""
        return self.spec.train

    def probe(self):
        """A model of the experiment's architecture (sizes for the parallelism plan)."""
        return self.setup.new_model_like()


Factory = Callable[[Any, str], Experiment]
