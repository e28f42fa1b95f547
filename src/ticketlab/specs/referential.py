"""The settings of the referential game (Zhou et al. 2022, "Fortuitous Forgetting in Connectionist Networks",
the compositional-language experiment), torch-free.

`GameOptions` is one settings group: `ticketlab forget --task referential-game` carries it, and
`ReferentialSpec` (the game alone, with its seeds) is what `ticketlab.experiments.referential` runs.
Every setting name here is prefixed or specific (`game_steps`, `game_lr`, ...) so the group can sit beside
the training settings of another spec without two settings sharing a flat name.

The paper's length is `--game-steps 300000` (with the other defaults as they are: 8 colours x 4 shapes,
vocabulary 8, messages of 2 symbols, 5 candidates, batch 100, Adam 1e-3, receiver reset every 6000,
partial balanced forgetting every 3000 keeping 10%); the default here is short enough for a laptop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import UserError
from ..spec import (COUNT_LIMIT, TENSORBOARD_HELP, Choice, Float, Folder, Int, ListOf, Seed, TrainSpec,
                    setting)

ARMS = ("none", "receiver-reset", "partial-forget")
ITERATION_LIMIT = 10_000_000


@dataclass(frozen=True)
class GameOptions:
    """The referential game: objects, agents, training and the forgetting arms."""

    game_steps: int = setting(20_000, "training iterations of each game (the paper: 300000)", Int(1, ITERATION_LIMIT))
    colours: int = setting(8, "colours, the first attribute of an object", Int(2, 64))
    shapes: int = setting(4, "shapes, the second attribute of an object", Int(2, 64))
    vocab: int = setting(8, "symbols the sender may use", Int(2, 256))
    message_length: int = setting(2, "symbols in a message", Int(1, 16))
    candidates: int = setting(5, "objects shown to the receiver: the target and candidates-1 distractors", Int(2, 64))
    game_hidden: int = setting(64, "hidden width of the sender and receiver networks", Int(1, 4096))
    game_batch_size: int = setting(100, "games per iteration", Int(1, 100_000))
    game_lr: float = setting(1e-3, "Adam learning rate of both agents", Float(0, None, low_open=True))
    game_entropy: float = setting(0.1, "weight of the sender's entropy bonus in REINFORCE (0.1: the paper's authors' code)", Float(0))
    reset_every: int = setting(6000, "receiver-reset arm: re-initialise the receiver every this many iterations", Int(1, ITERATION_LIMIT))
    forget_every: int = setting(3000, "partial-forget arm: forget every this many iterations", Int(1, ITERATION_LIMIT))
    forget_keep: float = setting(0.1, "partial-forget arm: fraction of each agent's weights kept (largest at init, the same "
                                 "every time); the rest are redrawn", Float(0, 1, high_open=True))
    game_eval_every: int = setting(500, "measure topographic similarity and accuracy every this many iterations (and at the end)",
                                   Int(1, ITERATION_LIMIT))
    game_checkpoint_every: int = setting(2000, "save a resumable checkpoint of a game every this many iterations (0: never)",
                                         Int(0, ITERATION_LIMIT), hashed=False)
    game_arms: tuple = setting(ARMS, f"arms: {', '.join(ARMS)}", ListOf(Choice("game arm", lambda: ARMS), unique=True))

    def check(self) -> None:
        if self.candidates > self.colours * self.shapes:
            raise UserError(f"--candidates {self.candidates}: there are only {self.colours * self.shapes} objects "
                            f"({self.colours} colours x {self.shapes} shapes)")


@dataclass(frozen=True)
class GameRuns:
    """Which replicates run."""

    seeds: tuple = setting((0,), "replicates, e.g. 0,1,2 (each (arm, seed) is kept in its own folder)",
                           ListOf(Seed(), unique=True), hashed=False)
    workers: int = setting(0, "worker processes for independent games (0: automatic; 1: this process only)",
                           Int(0, COUNT_LIMIT), hashed=False)
    tensorboard: str = setting("", TENSORBOARD_HELP, Folder(), hashed=False)


@dataclass(frozen=True)
class ReferentialSpec:
    """The referential game alone: `GameOptions` and seeds."""

    experiment: ClassVar[str] = "referential"
    game: GameOptions = field(default_factory=GameOptions)
    runs: GameRuns = field(default_factory=GameRuns)

    def validate(self) -> None:
        self.game.check()

    @property
    def train(self) -> TrainSpec:
        """What the runner reads of a spec's training settings (workers; games run on a CPU, one thread each)."""
        return TrainSpec(workers=self.runs.workers, max_batch=1, batch_size=self.game.game_batch_size,
                         tensorboard=self.runs.tensorboard)
