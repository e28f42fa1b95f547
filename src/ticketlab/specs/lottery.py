"""The spec of `ticketlab lottery` (iterative magnitude pruning with rewinding, fine-tuning or LR rewinding)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import UserError
from ..spec import (Bool, Choice, DataSpec, Int, Seed, ListOf, ModelSpec, Optional, PruneSpec, Step, TrainSpec,
                    LEVEL_LIMIT, setting)
from .lca import LCASettings

RETRAIN = ("rewind", "finetune", "lr-rewind")
CONTROLS = ("random_reinit", "random_prune", "reshuffle")


@dataclass(frozen=True)
class LotteryOptions:
    """The pruning loop: levels, rewinding, retraining and controls."""

    levels: int = setting(10, f"pruning levels after the dense network (level 0); at most {LEVEL_LIMIT}, and every layer must keep a weight",
                         Int(0, LEVEL_LIMIT))
    rewind: str = setting("0it", "rewind point k: weights (and schedule) reset to step k (0it = init)", Step())
    retrain: str = setting("rewind", f"retraining after each pruning: {', '.join(RETRAIN)}", Choice("retrain mode", lambda: RETRAIN))
    retrain_steps: str | None = setting(None, "t, the retraining length of finetune / lr-rewind (default: the whole training length)",
                                        Optional(Step()))
    controls: tuple = setting(("random_reinit", "random_prune"), f"control arms at every level: {', '.join(CONTROLS)} (none: no controls)",
                              ListOf(Choice("control", lambda: CONTROLS), nonempty=False, unique=True))
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2 (each seed is kept in its own folder; adding seeds reuses the others)",
                           ListOf(Seed(), unique=True), hashed=False)


@dataclass(frozen=True)
class LotteryLCA(LCASettings):
    """Loss Change Allocation while training every unit (Lan et al. 2019)."""

    lca: bool = setting(False, "record Loss Change Allocation while training every ticket and control (see `ticketlab lca`)", Bool())


@dataclass(frozen=True)
class LotterySpec:
    experiment: ClassVar[str] = "lottery"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    lottery: LotteryOptions = field(default_factory=LotteryOptions)
    lca: LotteryLCA = field(default_factory=LotteryLCA)

    def validate(self) -> None:
        self.lca.check()
        if self.lottery.retrain == "rewind" and self.lottery.retrain_steps is not None:
            raise UserError("--retrain-steps applies to --retrain finetune / lr-rewind; rewinding retrains from --rewind to the end")
