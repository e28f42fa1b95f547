"""`fit`: one network, optionally masked, trained on iterations [start, end), resumable exactly.

The loop itself is `train/loop.py` (shared with stacked and supermask training); this is its entry point
for one model. `Checkpoints`, `FitResult` and the optimizer flattening are re-exported from here, where
callers have always found them.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .. import seeding, steps
from ..data import Dataset
from ..sparse import Mask
from .callbacks import OnStep, as_list, assemble
from .checkpoint import CHECKPOINT_SECONDS, Checkpoints, optimizer_from_flat, optimizer_to_flat
from .loop import FitResult, train_loop
from .optim import Schedule
from .steppers import ModelStepper

__all__ = ["fit", "FitResult", "Checkpoints", "CHECKPOINT_SECONDS", "optimizer_from_flat", "optimizer_to_flat"]


def fit(model: nn.Module, data: Dataset, train, *, seed: int, start: int, end: int, schedule: Schedule,
        mask: Mask | None = None, checkpoints: Checkpoints | None = None,
        progress: Callable[[int], None] | None = None, callbacks=None,
        on_step: Callable[[int, nn.Module], None] | None = None) -> FitResult:
    """Train `model` in place on iterations [start, end) and evaluate every `train.eval_every`.

    `data` must already be on the model's device. `mask` is re-applied after every optimizer step (and
    once before training). `callbacks` (one, or a list; `train/callbacks.py`) watch or adjust training
    and are called in list order; their state travels in the checkpoints. `progress(n)` gets the number
    of iterations done after each one. `on_step(step, model)` is the older spelling of an `OnStep` callback
    placed after `callbacks`.
    """
    stepper = ModelStepper(model, data, train, seed=seed)
    every = steps.resolve(train.eval_every, stepper.iterations_per_epoch)
    extra = [OnStep(on_step)] if on_step is not None else []
    own = assemble(mask, as_list(callbacks) + extra, progress=progress, start=start)
    return train_loop(stepper, [own], start=start, end=end, schedule=schedule, eval_every=every,
                      checkpoints=[checkpoints or Checkpoints()], rng_seed=seeding.derive_seed("fit", seed, start))[0]
