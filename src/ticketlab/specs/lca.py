"""The spec of `ticketlab lca` (Loss Change Allocation), and the LCA settings other experiments reuse."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import UserError
from ..spec import DataSpec, Float, Int, Seed, ListOf, ModelSpec, Text, TrainSpec, setting


@dataclass(frozen=True)
class LCASettings:
    """How Loss Change Allocation is measured (Lan et al. 2019)."""

    lca_points: int = setting(2, "Simpson intervals n of the path integral to start with (even; 2 = the paper's RK4)", Int(2))
    lca_max_points: int = setting(32, "largest n the adaptive doubling may reach (n = --lca-points: no doubling)", Int(2))
    lca_tolerance: float = setting(1e-3, "n doubles while |sum of LCA - true loss change| of a step exceeds this", Float(0, None, low_open=True))
    lca_subset: int = setting(0, "measure the loss on this many training samples (a fixed seeded subset; 0: the full training set)", Int(0))
    lca_parameter_chunk: int = setting(0, "also stream the per-parameter LCA of every step to disk, in files of this many steps (0: per-parameter totals only)", Int(0))
    lca_layer: str = setting("", "layer (module name) of the per-neuron heat map (default: the first)", Text(), hashed=False)

    def check(self) -> None:
        for name, n in (("--lca-points", self.lca_points), ("--lca-max-points", self.lca_max_points)):
            if n not in (2, 4, 8, 16, 32, 64, 128):
                raise UserError(f"{name} {n}: must be a power of two from 2 to 128 (Simpson's rule, doubled adaptively)")
        if self.lca_max_points < self.lca_points:
            raise UserError(f"--lca-max-points {self.lca_max_points} is below --lca-points {self.lca_points}")


@dataclass(frozen=True)
class LCAOptions:
    """What is trained: a dense network or a ticket from a lottery run."""

    mask: str = setting("", "a ticket's mask.safetensors (e.g. RUN_DIR/seed-0/level-05/ticket/mask.safetensors); empty: dense", Text())
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2 (each seed is kept in its own folder)", ListOf(Seed(), unique=True), hashed=False)


@dataclass(frozen=True)
class LCASpec:
    experiment: ClassVar[str] = "lca"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    lca: LCASettings = field(default_factory=LCASettings)
    options: LCAOptions = field(default_factory=LCAOptions)

    def validate(self) -> None:
        self.lca.check()
