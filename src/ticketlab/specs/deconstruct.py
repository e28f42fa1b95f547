"""The spec of `ticketlab deconstruct` (Zhou et al.'s grid of mask criteria and mask actions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..names import MASK_ONE_ACTIONS, MASK_ZERO_ACTIONS
from ..spec import (Bool, Choice, DataSpec, Int, Seed, ListOf, ModelSpec, PruneSpec, Step, TrainSpec, _criteria,
                    LEVEL_LIMIT, setting)
from .lottery import LotteryOptions, LotterySpec


@dataclass(frozen=True)
class DeconstructPruneSpec(PruneSpec):
    """How masks are chosen at each pruning level (one chain per criterion)."""

    criterion: tuple = setting(("large_final", "small_final", "random"),
                               "mask criteria compared, e.g. large_final,random (score; higher is kept)",
                               ListOf(Choice("criterion", _criteria), unique=True))


@dataclass(frozen=True)
class DeconstructOptions:
    """The grid: mask-1 / mask-0 actions, levels, untrained supermasks, seeds."""

    mask_one: tuple = setting(("rewind",), f"mask-1 actions (start values of kept weights): {', '.join(MASK_ONE_ACTIONS)}",
                              ListOf(Choice("mask-1 action", lambda: MASK_ONE_ACTIONS), unique=True))
    mask_zero: str = setting("zero", f"mask-0 action (value of pruned weights): {', '.join(MASK_ZERO_ACTIONS)}",
                             Choice("mask-0 action", lambda: MASK_ZERO_ACTIONS))
    rescale: bool = setting(False, "multiply the kept weights of each layer by numel / #kept (Zhou et al.'s *_rescaling)", Bool())
    levels: int = setting(10, f"pruning levels after the dense network (level 0); at most {LEVEL_LIMIT}, and every layer must keep a weight",
                         Int(0, LEVEL_LIMIT))
    rewind: str = setting("0it", "rewind point k: w_i is the weights at step k (0it = init); retraining replays [k, T)", Step())
    untrained: tuple = setting(("rewind", "signed_constant"),
                               "untrained-supermask evaluations per level: each cell's mask on the init as is (rewind) or "
                               "as sign(w_i) * sigma_layer (signed_constant); none: skip",
                               ListOf(Choice("untrained weights", lambda: ("rewind", "signed_constant")), nonempty=False, unique=True))
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2", ListOf(Seed(), unique=True), hashed=False)


@dataclass(frozen=True)
class DeconstructSpec:
    experiment: ClassVar[str] = "deconstruct"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    prune: DeconstructPruneSpec = field(default_factory=DeconstructPruneSpec)
    deconstruct: DeconstructOptions = field(default_factory=DeconstructOptions)

    def lottery_spec(self, criterion: str) -> LotterySpec:
        """The lottery experiment one criterion's chains are built from (rewinding, no controls)."""
        p, d = self.prune, self.deconstruct
        prune = PruneSpec(prune_fraction=p.prune_fraction, output_prune_fraction=p.output_prune_fraction,
                          layer_prune_fractions=p.layer_prune_fractions, prune_scope=p.prune_scope, criterion=criterion)
        return LotterySpec(data=self.data, model=self.model, train=self.train, prune=prune,
                           lottery=LotteryOptions(levels=d.levels, rewind=d.rewind, retrain="rewind", controls=(), seeds=d.seeds))
