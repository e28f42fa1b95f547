"""The spec of `ticketlab forget` (forget-and-relearn: generations of forgetting and retraining, and the
targeted-forgetting probe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import UserError
from ..names import FORGET_METHODS as METHODS, FREEZE, KE_SPLIT_MODES, REDRAWS
from ..spec import (Bool, Choice, DataSpec, Float, Int, ListOf, ModelSpec, Optional, Seed, Step, Text, TrainSpec,
                    LEVEL_LIMIT, setting)
from .referential import GameOptions

PROBES = ("none", "targeted")
TASKS = ("classify", "referential-game")
GROUPS = ("labels", "margin")


@dataclass(frozen=True)
class ForgetOptions:
    """Which forgetting operations, how many generations, and the targeted-forgetting probe."""

    methods: tuple = setting(METHODS, f"forgetting operations, each its own chain of generations: {', '.join(METHODS)}",
                             ListOf(Choice("forgetting method", lambda: METHODS), unique=True), hashed=False)
    generations: int = setting(10, "relearning generations after generation 0 (the plain training); the long baseline "
                               "trains (generations + 1) x --steps in one go", Int(0, LEVEL_LIMIT))
    probe: str = setting("none", "targeted: while generation 0 trains, every --probe-every steps a copy of the network is "
                         "forgotten by each method and accuracy, loss and entropy per group are measured before and after "
                         "(probes.csv); none: no probe", Choice("probe", lambda: PROBES))
    probe_every: str = setting("100it", "steps between two targeted-forgetting probes", Step())
    groups: str = setting("labels", "groups of the probe: labels (mislabeled = the examples --random-labels randomised, "
                          "clean = the rest) or margin (hard = the tenth of the training examples with the lowest margin, the "
                          "logit of their label minus the largest other logit, at each probe; rest = the others)",
                          Choice("probe groups", lambda: GROUPS))
    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2 (each seed is kept in its own folder; adding seeds reuses the others)",
                           ListOf(Seed(), unique=True), hashed=False)
    task: str = setting("classify", "classify: forget-and-relearn on the data set (the settings above); referential-game: the "
                        "sender/receiver game with receiver resets and partial balanced forgetting (the [game] settings)",
                        Choice("task", lambda: TASKS))


@dataclass(frozen=True)
class ForgetOperation:
    """How each operation forgets (settings of the methods that use them)."""

    reset_from: str | None = setting(None, "llf: the first layer forgotten, a module name in the model's order (e.g. "
                                     "hidden.1, fc; none: the output layer); it and every later parameter are redrawn",
                                     Optional(Text()))
    redraw: str = setting("init", f"what forgotten entries get (llf, ke, random): {', '.join(REDRAWS)} (init: a fresh draw "
                          "of the model's initialisation); imp always zeroes", Choice("redraw", lambda: REDRAWS))
    reset_bn: bool = setting(False, "also reset the BatchNorm layers the operation covers (weight 1, bias 0, fresh running "
                             "statistics); false: BatchNorm is kept", Bool())
    split_rate: float = setting(0.8, "ke: the fraction r of each layer in the fit hypothesis", Float(0, 1, low_open=True, high_open=True))
    split_mode: str = setting("kels", "ke: kels (the first ceil(r out) units x the first ceil(r in) inputs; all inputs of "
                              "the first layer, all outputs of the output layer) or wels (a Bernoulli(r) mask per weight, "
                              "drawn once per seed)", Choice("split mode", lambda: KE_SPLIT_MODES))
    keep: float | None = setting(None, "random, imp: fraction of each layer's weights kept (none: 0.5 for random, 0.3 for imp)",
                                 Optional(Float(0, 1)))
    output_rate_factor: float = setting(0.5, "random, imp: the output layer forgets this fraction of their rate (keep 0.5: "
                                        "the output layer keeps 0.75)", Float(0, 1))
    fix_seed: bool = setting(False, "every generation redraws the same values (false: a fresh draw per generation)", Bool())
    freeze: str = setting("none", "while relearning, hold still: none, kept (every entry the operation kept, untouched "
                          "layers included: only the forgotten part relearns) or reset (the forgotten entries stay at their "
                          "new values: only the kept part relearns)", Choice("freeze", lambda: FREEZE))


@dataclass(frozen=True)
class ForgetSpec:
    experiment: ClassVar[str] = "forget"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    forget: ForgetOptions = field(default_factory=ForgetOptions)
    operation: ForgetOperation = field(default_factory=ForgetOperation)
    game: GameOptions = field(default_factory=GameOptions)

    def validate(self) -> None:
        self.game.check()
        fo = self.forget
        self.check_task()
        if fo.probe == "targeted" and fo.groups == "labels" and self.data.random_labels == 0:
            raise UserError("--probe targeted with --groups labels needs mislabeled examples: give --random-labels "
                            "(e.g. 0.1), or use --groups margin")

    def check_task(self) -> None:
        """Each task uses its own settings: a setting of the other task, given, would be ignored: refuse it."""
        from ..spec import settings_of

        own = {"referential-game": ("game",), "classify": ("data", "model", "train", "forget", "operation")}[self.forget.task]
        ignored = [s.flag for s in settings_of(type(self))
                   if s.hashed and s.group not in own and s.name != "task"
                   and getattr(getattr(self, s.group), s.name) != s.default]
        if ignored:
            raise UserError(f"--task {self.forget.task} does not use {', '.join(ignored)}; leave "
                            f"{'it' if len(ignored) == 1 else 'them'} unset (the game has its own --game-* settings; "
                            f"the classification task uses the others)")

