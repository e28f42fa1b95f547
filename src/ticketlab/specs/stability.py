"""The spec of `ticketlab stability` (linear mode connectivity)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..spec import LEVEL_LIMIT, DataSpec, Int, Seed, ListOf, ModelSpec, PruneSpec, Step, TrainSpec, setting


@dataclass(frozen=True)
class StabilityOptions:
    """Where the copies are made, which networks, and how finely the path is measured."""

    copy_steps: tuple = setting(("0it",), "steps k where the network is copied (and the tickets' rewind point), e.g. 0it,50it,1ep",
                                ListOf(Step(), unique=True))
    ticket_levels: tuple = setting((0,), "0: the dense network; L > 0: the IMP ticket of level L rewound to k (from a lottery run), e.g. 0,3",
                                   ListOf(Int(0, LEVEL_LIMIT), unique=True))
    interpolation_points: int = setting(30, "points on the straight path between the two copies, ends included (2 to 10000)", Int(2, 10_000))
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2 (each seed is kept in its own folder)", ListOf(Seed(), unique=True), hashed=False)


@dataclass(frozen=True)
class StabilitySpec:
    experiment: ClassVar[str] = "stability"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    stability: StabilityOptions = field(default_factory=StabilityOptions)
