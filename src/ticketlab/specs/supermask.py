"""The spec of `ticketlab supermask` (learned supermasks on frozen random weights), and its defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import UserError
from ..names import SUPERMASK_METHODS as METHODS
from ..spec import (Bool, Choice, DataSpec, Float, ListOf, ModelSpec, Optional, Seed, TrainSpec, setting)

WEIGHTS = ("init", "signed_constant", "signed_kaiming_constant")
DEFAULT_LR = {"bernoulli": 100.0, "edge-popup": 0.1}
DEFAULT_WEIGHTS = {"bernoulli": "init", "edge-popup": "signed_kaiming_constant"}


@dataclass(frozen=True)
class SupermaskTrainSpec(TrainSpec):
    """How the scores are trained (the weights never are)."""

    optimizer: str = setting("sgd", "optimizer of the scores: adam, sgd", Choice("optimizer", lambda: ("sgd", "adam")))
    lr: float | None = setting(None, "learning rate of the scores; none: 100 for bernoulli, 0.1 for edge-popup",
                               Optional(Float(0, None, low_open=True)))


@dataclass(frozen=True)
class SupermaskOptions:
    """Which supermask is learned, over which frozen weights."""

    method: str = setting("bernoulli", f"supermask method: {', '.join(METHODS)}", Choice("supermask method", lambda: METHODS))
    kept: float = setting(0.5, "edge-popup: fraction of each layer's weights kept (top-k |score|)", Float(0, 1, low_open=True))
    weights: str | None = setting(None, f"frozen weights: {', '.join(WEIGHTS)}; none: init for bernoulli, "
                                  "signed_kaiming_constant for edge-popup", Optional(Choice("supermask weights", lambda: WEIGHTS)))
    rescale: bool = setting(True, "bernoulli: dynamic weight rescaling, weights x numel / sum(mask) per layer", Bool())
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2", ListOf(Seed(), unique=True), hashed=False)


@dataclass(frozen=True)
class SupermaskSpec:
    experiment: ClassVar[str] = "supermask"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: SupermaskTrainSpec = field(default_factory=SupermaskTrainSpec)
    supermask: SupermaskOptions = field(default_factory=SupermaskOptions)

    def validate(self) -> None:
        s = self.supermask
        if s.method != "edge-popup" and s.kept != 0.5:
            raise UserError("--kept applies to --method edge-popup only (bernoulli learns how many weights it keeps)")

    def resolved_train(self) -> TrainSpec:
        """The train settings with the method's default learning rate filled in."""
        lr = self.train.lr if self.train.lr is not None else DEFAULT_LR[self.supermask.method]
        return dataclasses.replace(self.train, lr=lr)

    def resolved_weights(self) -> str:
        return self.supermask.weights or DEFAULT_WEIGHTS[self.supermask.method]
