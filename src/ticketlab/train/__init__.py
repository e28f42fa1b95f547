"""Training: optimizers and schedules, evaluation, and the fit loop with masks and checkpoints."""

from .evaluate import evaluate
from .fit import FitResult, fit
from .optim import Schedule, make_optimizer

__all__ = ["evaluate", "FitResult", "fit", "Schedule", "make_optimizer"]
