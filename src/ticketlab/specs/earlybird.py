"""The spec of `ticketlab earlybird` (early-bird tickets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..spec import Bool, DataSpec, Float, Int, Seed, ListOf, ModelSpec, TrainSpec, setting


@dataclass(frozen=True)
class EarlyBirdOptions:
    """The early-bird search and the tickets it yields."""

    prune_ratios: tuple = setting((0.3, 0.5, 0.7), "fractions p of channels (or weights, without BatchNorm) pruned; several at once",
                                  ListOf(Float(0, 1, low_open=True, high_open=True), unique=True))
    bn_penalty: float = setting(1e-4, "L1 penalty s on the BatchNorm scales during the search (0: none)", Float(0))
    eb_epsilon: float = setting(0.1, "early bird when the newest mask is within this Hamming distance of each older one", Float(0, 1, low_open=True))
    eb_window: int = setting(5, "masks in the FIFO (the newest and window - 1 older ones)", Int(2))
    eb_full_matrix: bool = setting(False, "keep training the dense network to the end, recording every epoch's mask", Bool())
    eb_every_epoch: bool = setting(False, "also retrain the tickets drawn at every epoch (first ratio), for the accuracy-by-epoch plot", Bool())
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2 (each seed is kept in its own folder)", ListOf(Seed(), unique=True), hashed=False)


@dataclass(frozen=True)
class EarlyBirdSpec:
    experiment: ClassVar[str] = "earlybird"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    earlybird: EarlyBirdOptions = field(default_factory=EarlyBirdOptions)
