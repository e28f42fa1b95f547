"""The spec of `ticketlab prune-at-init` (SNIP, GraSP, SynFlow, random and magnitude pruning at initialisation,
with the mask-reshuffle and reinitialisation controls of Frankle et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import UserError
from ..names import ALLOCATIONS, PRUNE_AT_INIT_METHODS as METHODS
from ..spec import (ListOf, Choice, DataSpec, Float, Folder, Int, ModelSpec, Optional, Rates, Seed, Step, TrainSpec,
                    setting)

CONTROLS = ("reshuffle", "reinit")
ARMS = ("pruned",) + CONTROLS


@dataclass(frozen=True)
class PruneAtInitOptions:
    """Which methods, at which densities, scored when, in how many rounds; the controls; the IMP run to compare with."""

    methods: tuple = setting(METHODS, f"pruning-at-init methods, each a unit per density and seed: {', '.join(METHODS)}",
                             ListOf(Choice("method", lambda: METHODS), unique=True), hashed=False)
    densities: tuple = setting((0.2, 0.05), "fractions of the prunable weights kept (the weights_remaining of lottery), "
                               "e.g. 0.2,0.05", ListOf(Float(0, 1, low_open=True, high_open=True), unique=True), hashed=False)
    allocation: str = setting("global", "how a density is split among layers: global (one threshold over every layer's "
                              "scores, as SNIP / GraSP / SynFlow), layerwise (IMP's per-layer rates --prune-fraction / "
                              "--output-prune-fraction carried to the density), uniform (every layer at it), erk "
                              "(Erdos-Renyi-Kernel)", Choice("allocation", lambda: ALLOCATIONS))
    iterations: int | None = setting(None, "pruning rounds, density D^(i/N) after round i (none: each method's own: "
                                     "synflow 100, the others 1)", Optional(Int(1, 10_000)))
    score_batches: int | None = setting(None, "training batches (of --batch-size) snip and grasp score on (none: snip 1, "
                                        "as Lee et al.; grasp 2)", Optional(Int(1, 10_000)))
    rewind: str = setting("0it", "score and start training at step k of a dense training (0it: at initialisation); "
                          "the masked networks train on [k, T)", Step())
    controls: tuple = setting(CONTROLS, "control arms of every method but random (Frankle et al. 2021): reshuffle (each "
                              "layer's mask permuted: same per-layer density, random positions), reinit (same mask, a "
                              "fresh init); none: no controls",
                              ListOf(Choice("control", lambda: CONTROLS), nonempty=False, unique=True), hashed=False)
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2 (each seed is kept in its own folder; adding seeds reuses the others)",
                           ListOf(Seed(), unique=True), hashed=False)
    compare: str = setting("", "a lottery run folder: its IMP tickets are put beside the methods in the plot and the "
                           "table (empty: none; an output option, the run folder does not depend on it)",
                           Folder(), hashed=False)


@dataclass(frozen=True)
class PruneAtInitRates:
    """IMP's per-layer rates, which --allocation layerwise carries to each density."""

    prune_fraction: float = setting(0.2, "layerwise allocation: the hidden layers' rate (as lottery's fraction per level)",
                                    Float(0, 1, low_open=True, high_open=True))
    output_prune_fraction: float = setting(0.1, "layerwise allocation: the output layer's rate (0: never pruned)",
                                           Float(0, 1, high_open=True))
    layer_prune_fractions: tuple = setting((), "layerwise allocation: per-layer rates overriding the two above, e.g. "
                                           "fc1.weight=0.3", Rates())


@dataclass(frozen=True)
class PruneAtInitSpec:
    experiment: ClassVar[str] = "prune-at-init"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    prune: PruneAtInitRates = field(default_factory=PruneAtInitRates)
    prune_at_init: PruneAtInitOptions = field(default_factory=PruneAtInitOptions)

    def validate(self) -> None:
        p = self.prune
        if self.prune_at_init.allocation != "layerwise" and (p.prune_fraction, p.output_prune_fraction, p.layer_prune_fractions) != (0.2, 0.1, ()):
            raise UserError(f"--prune-fraction, --output-prune-fraction and --layer-prune-fractions apply to --allocation "
                            f"layerwise only (got --allocation {self.prune_at_init.allocation})")
