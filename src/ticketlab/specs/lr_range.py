"""The spec of `ticketlab lr-range` (the LR range test of Smith 2017), torch-free."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from .. import steps
from ..errors import UserError
from ..names import LR_RANGE_CURVES as CURVES
from ..spec import Choice, DataSpec, Float, ListOf, ModelSpec, Optional, Seed, Step, TrainSpec, setting


@dataclass(frozen=True)
class RangeTrainSpec(TrainSpec):
    """How the network is trained while the rate rises (--steps: the test's length N)."""

    steps: str = setting("200it", "length of the range test: N iterations, the rate rising from --min-lr to --max-lr",
                         Step())
    lr: float | None = setting(None, "not used: the range test sets the rate itself (--min-lr to --max-lr)",
                               Optional(Float(0, None, low_open=True)))


@dataclass(frozen=True)
class RangeOptions:
    """The rates tried and how the loss curve is read."""

    min_lr: float = setting(1e-6, "rate of the first step", Float(0, None, low_open=True))
    max_lr: float = setting(10.0, "rate of the last step (reached unless the loss diverges first)", Float(0, None, low_open=True))
    curve: str = setting("exp", f"how the rate rises: {', '.join(CURVES)} (exp: geometrically, linear: arithmetically)",
                         Choice("curve", lambda: CURVES))
    smoothing: float = setting(0.98, "beta of the loss's exponential moving average (bias-corrected)", Float(0, 1, high_open=True))
    divergence: float = setting(4.0, "stop once the smoothed loss exceeds this many times its minimum so far",
                                Float(1, None, low_open=True))
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2", ListOf(Seed(), unique=True), hashed=False)


@dataclass(frozen=True)
class LRRangeSpec:
    experiment: ClassVar[str] = "lr-range"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: RangeTrainSpec = field(default_factory=RangeTrainSpec)
    range: RangeOptions = field(default_factory=RangeOptions)

    def validate(self) -> None:
        r, t = self.range, self.train
        if r.max_lr <= r.min_lr:
            raise UserError(f"--max-lr {r.max_lr:g} must be above --min-lr {r.min_lr:g}")
        if t.lr is not None:
            raise UserError("--lr is not used by lr-range: the rate rises from --min-lr to --max-lr")
        if t.schedule != "constant" or steps.parse(t.warmup) != (0, 0) or t.milestones:
            raise UserError("lr-range sets the rate itself: leave --schedule, --warmup and --milestones unset")
        if steps.parse(t.steps)[0] == 0 and steps.parse(t.steps)[1] < 2:
            raise UserError(f"--steps {t.steps}: the range test needs at least 2 iterations")

    def resolved_train(self) -> TrainSpec:
        """The train settings with a rate filled in (the schedule replaces it at every step)."""
        return dataclasses.replace(self.train, lr=self.range.min_lr)
