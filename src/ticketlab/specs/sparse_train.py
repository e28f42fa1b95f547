"""The spec of `ticketlab sparse-train` (pruning during training: gradual magnitude pruning, SET, RigL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import UserError
from ..names import SPARSE_ALLOCATIONS as ALLOCATIONS, SPARSE_TRAIN_METHODS as METHODS
from ..spec import Choice, DataSpec, Float, ListOf, ModelSpec, Optional, Seed, Step, TrainSpec, setting
from .. import steps


@dataclass(frozen=True)
class SparseTrainOptions:
    """Which methods, at which final densities, and how the mask changes while training."""

    methods: tuple = setting(METHODS, f"methods, each trained at every density: {', '.join(METHODS)} (gmp: gradual "
                             "magnitude pruning from dense, Zhu & Gupta 2017; set / rigl: a random sparse mask at the "
                             "density from the start, drop by magnitude and grow at random / by the dense gradient, "
                             "Mocanu et al. 2018 / Evci et al. 2020)",
                             ListOf(Choice("sparse-train method", lambda: METHODS), unique=True), hashed=False,
                             aliases=("--method",))
    densities: tuple = setting((0.2, 0.05), "final fractions of the prunable weights kept, e.g. 0.2,0.05 (one unit per method, "
                               "density and seed)", ListOf(Float(0, 1, low_open=True), unique=True), hashed=False,
                               aliases=("--density",))
    allocation: str = setting("uniform", "how each density is split among layers: uniform (every layer at it), erk "
                              "(Erdos-Renyi-Kernel, Evci et al. 2020) or global (gmp only: one magnitude threshold over "
                              "all layers; set / rigl hold each layer's count fixed, so they need uniform or erk)",
                              Choice("allocation", lambda: ALLOCATIONS))
    prune_start: str | None = setting(None, "gmp: t0, the step of the first pruning (none: 10% of --steps)", Optional(Step()))
    prune_end: str | None = setting(None, "gmp: the step where the final density is reached (none: 75% of --steps)",
                                    Optional(Step()))
    prune_every: str = setting("50it", "gmp: dt, steps between two prunings", Step())
    update_every: str = setting("50it", "set / rigl: steps between two mask updates", Step())
    update_end: str | None = setting(None, "set / rigl: no mask update from this step on; the drop fraction decays to 0 "
                                     "here (none: 75% of --steps, as in RigL)", Optional(Step()))
    drop_fraction: float = setting(0.3, "set / rigl: alpha, the fraction of each layer's active weights dropped (and "
                                   "regrown) at the first update, decayed by a cosine to 0 at --update-end", Float(0, 1))
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2 (each seed is kept in its own folder; adding seeds reuses the others)",
                           ListOf(Seed(), unique=True), hashed=False)


@dataclass(frozen=True)
class SparseTrainSpec:
    experiment: ClassVar[str] = "sparse-train"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    sparse: SparseTrainOptions = field(default_factory=SparseTrainOptions)

    def validate(self) -> None:
        s = self.sparse
        if s.allocation == "global" and set(s.methods) & {"set", "rigl"}:
            raise UserError("--allocation global applies to --methods gmp only: set / rigl keep every layer's count "
                            "fixed; use --allocation uniform or erk")
        for flag, value in (("--prune-every", s.prune_every), ("--update-every", s.update_every)):
            if steps.parse(value) == (0, 0):
                raise UserError(f"{flag} {value}: must be at least one iteration")
