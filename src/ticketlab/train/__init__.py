"""Training: optimizers and schedules, evaluation, and one training loop (with callbacks and checkpoints)
driven by steppers: one model, K stacked models, or a supermask's scores."""

from .callbacks import ApplyMask, Callback, OnStep, Progress, Snapshot
from .evaluate import evaluate
from .fit import FitResult, fit
from .loop import train_loop
from .optim import Schedule, make_optimizer

__all__ = ["ApplyMask", "Callback", "OnStep", "Progress", "Snapshot", "evaluate", "FitResult", "fit", "train_loop",
           "Schedule", "make_optimizer"]
