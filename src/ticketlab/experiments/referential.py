"""The referential game under forgetting (Zhou et al. 2022, the compositional-language experiment), on the
project's runner: one unit per (arm, seed), each a resumable game (`games.referential.train_game`).

The experiment is built from any spec with a `GameOptions` group and a group holding `seeds`:
`ReferentialSpec` (the game alone) or the forget experiment's spec with `--task referential-game`. Its
report: `results.csv` one row per (arm, seed, measured iteration) with topographic similarity and accuracy,
`summary.json` with the final values per arm (mean and std over seeds), and `topographic_similarity.png`
(mean over seeds per arm vs iterations, a band of one std).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from types import SimpleNamespace

import torch
from torch import nn

from ..games.referential import Receiver, Sender, train_game
from ..report import plots
from ..results import Results
from ..run import Experiment, Report, Work, runner
from ..store import Unit

from ..specs.referential import ARMS, GameOptions, GameRuns, ReferentialSpec  # noqa: F401 (torch-free, for the CLI)
from ..report.tables import referential as table  # noqa: F401 (torch-free, for `ticketlab show`)

MEASURES = ("topographic_similarity", "accuracy", "train_accuracy", "unique_messages")


def game_options(spec) -> GameOptions:
    """The `GameOptions` group of a spec (whatever the group is called)."""
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if isinstance(value, GameOptions):
            return value
    raise TypeError(f"{type(spec).__name__} has no GameOptions group")


def seeds_of(spec) -> tuple:
    """The seeds of a spec: the `seeds` setting of whichever group holds it."""
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if hasattr(value, "seeds"):
            return tuple(value.seeds)
    return (0,)


class ReferentialGame(Experiment):
    """Sender/receiver referential game, one unit per (arm, seed): none, receiver-reset, partial-forget."""

    name = "referential"
    metrics = ("topographic_similarity", "accuracy")
    stack_limit = 1   # games never stack

    def __init__(self, spec, setup):
        super().__init__(spec, setup)
        self.options = game_options(spec)
        self.seeds = seeds_of(spec)

    @classmethod
    def build(cls, spec) -> "ReferentialGame":
        torch.set_num_threads(1)   # one game per core (as `Setup.prepare` does for trainings)
        o = game_options(spec)
        setup = SimpleNamespace(device=torch.device("cpu"),
                                data=SimpleNamespace(input_shape=(o.colours + o.shapes,)))
        return cls(spec, setup)

    def probe(self) -> nn.Module:
        o = self.options
        a = o.colours + o.shapes
        return nn.ModuleList([Sender(a, o.vocab, o.message_length, o.game_hidden), Receiver(a, o.vocab, o.game_hidden)])

    # -------------------------------------------------------------------------------------------- units
    def units(self) -> list[Work]:
        return [Work((arm, seed), cost=self.options.game_steps, label=f"{arm} seed {seed}")
                for seed in self.seeds for arm in self.options.game_arms]

    def unit_of(self, key) -> Unit:
        arm, seed = key
        return self.run.unit(f"seed-{seed}", arm)

    def prepare(self, key):
        arm, seed = key
        unit = self.unit_of(key)

        def play(progress) -> dict:
            began = time.perf_counter()
            rows, summary = train_game(self.options, seed, arm, progress=progress, checkpoint=unit)
            return {"curve.jsonl": rows, "result.json": {**summary, "seconds": round(time.perf_counter() - began, 3)}}

        return play

    def progress_lines(self, key, result: dict, done: dict) -> list[str]:
        return [(f"{result['arm']:>15} seed {result['seed']}: topographic similarity {result['topographic_similarity']:.3f}, "
                 f"accuracy {100 * result['accuracy']:.1f}% after {result['steps']} iterations ({result['seconds']:.0f} s)")]

    # ------------------------------------------------------------------------------------------- report
    def report(self, results: dict) -> Report:
        o = self.options
        keys = [(arm, seed) for arm in o.game_arms for seed in self.seeds if (arm, seed) in results]
        rows = [r for key in keys for r in self.unit_of(key).read("curve.jsonl")]
        final = {}
        for arm in o.game_arms:
            finals = [results[(arm, s)] for s in self.seeds if (arm, s) in results]
            final[arm] = {"n": len(finals), **{f"{m}_{stat}": fn([float(r[m]) for r in finals])
                                               for m in ("topographic_similarity", "accuracy")
                                               for stat, fn in (("mean", _mean), ("std", _std))}}
        curves = curves_by_arm(rows)
        title = (f"referential game: {o.colours} colours x {o.shapes} shapes, vocabulary {o.vocab}, "
                 f"length {o.message_length}, {len(self.seeds)} seed{'s' if len(self.seeds) > 1 else ''}")
        summary = {"experiment": self.spec.experiment, "task": "referential-game", "steps": o.game_steps,
                   "seeds": list(self.seeds), "final": final, "units": [results[k] for k in keys]}
        return Report(rows, summary, {"topographic_similarity.png": plots.topographic_similarity_curves(curves, title)})


def curves_by_arm(rows: list[dict]) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """{arm: (steps, mean, std)} of topographic similarity over seeds."""
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        by_step: dict[int, list[float]] = {}
        for r in rows:
            if r["arm"] == arm:
                by_step.setdefault(int(r["step"]), []).append(float(r["topographic_similarity"]))
        steps = sorted(by_step)
        out[arm] = (steps, [_mean(by_step[s]) for s in steps], [_std(by_step[s]) for s in steps])
    return out


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _std(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)


EXPERIMENT = ReferentialGame   # what a sweep of this experiment runs


def run(spec, *, out: str = "runs", force: bool = False, progress: bool | None = None, wait: bool = False) -> Results:
    """Run (or resume) the referential game for every arm and seed; one row per (arm, seed, measure)."""
    return runner.run(ReferentialGame, spec, out=out, force=force, progress=progress, wait=wait)
