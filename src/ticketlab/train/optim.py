"""Optimizers and learning-rate schedules, both driven by a TrainSpec."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import steps


def stacks(train) -> bool:
    """Whether the stacked engine can train with `train`'s optimizer: it steps SGD and fused Adam itself, so
    FOP (a preconditioner per tensor, stepping itself) trains its models alone."""
    return not str(getattr(train, "optimizer", "")).startswith("fop-")


def make_optimizer(params, train, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, weight decay) or Adam. Adam is the fused kernel where the device has it:
    with masks, plain Adam is ~45% slower here (sqrt of exact-zero second moments, measured on this build)."""
    params = list(params)
    if train.optimizer in ("fop-sgd", "fop-adam"):   # a preconditioner per layer learned by hypergradient descent
        from .fop import FOP
        return FOP(params, base=train.optimizer[4:], lr=train.lr, fop_lr=train.fop_lr, linear=train.fop_linear, momentum=train.momentum,
                   nesterov=train.nesterov and train.momentum > 0, weight_decay=train.weight_decay)
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov and train.momentum > 0,
                               weight_decay=train.weight_decay)
    fused = device.type in ("cpu", "cuda", "mps")
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay, fused=fused or None)


@dataclass(frozen=True)
class Schedule:
    """Learning rate as a function of the iteration: linear warmup, then constant, milestones or cosine; or
    one-cycle (Smith & Topin 2019: linear warmup from lr / div_factor to lr over the first pct_start of
    training, then cosine annealing to lr / final_div at the last step; only the rate cycles, not the
    momentum); or an LR range test's sweep (`range_test`: from lr to range_max, exponentially or linearly)."""

    lr: float
    kind: str
    total: int
    warmup: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div: float = 1e4
    range_max: float = 0.0
    curve: str = "exp"

    @classmethod
    def range_test(cls, min_lr: float, max_lr: float, total: int, curve: str = "exp") -> "Schedule":
        """The LR range test's rates (Smith 2017): min_lr at iteration 0, max_lr at iteration total - 1,
        geometric (`exp`) or arithmetic (`linear`) in between."""
        return cls(lr=min_lr, kind="range", total=total, range_max=max_lr, curve=curve)

    @classmethod
    def from_spec(cls, train, iterations_per_epoch: int) -> "Schedule":
        return cls(lr=train.lr, kind=train.schedule, total=steps.resolve(train.steps, iterations_per_epoch),
                   warmup=steps.resolve(train.warmup, iterations_per_epoch),
                   milestones=tuple(sorted(steps.resolve(m, iterations_per_epoch) for m in train.milestones)),
                   gamma=train.gamma, pct_start=getattr(train, "pct_start", 0.3),
                   div_factor=getattr(train, "div_factor", 25.0), final_div=getattr(train, "final_div", 1e4))

    def __call__(self, iteration: int) -> float:
        if self.kind == "milestones":
            lr = self.lr * self.gamma ** sum(iteration >= m for m in self.milestones)
        elif self.kind == "cosine":
            span = max(self.total - self.warmup, 1)
            progress = min(max(iteration - self.warmup, 0) / span, 1.0)
            lr = 0.5 * self.lr * (1 + math.cos(math.pi * progress))
        elif self.kind == "one-cycle":
            peak = min(max(round(self.pct_start * (self.total - 1)), 1), max(self.total - 2, 1))
            low, end = self.lr / self.div_factor, self.lr / self.final_div
            if iteration <= peak:
                lr = low + (self.lr - low) * iteration / peak
            else:
                progress = min((iteration - peak) / max(self.total - 1 - peak, 1), 1.0)
                lr = end + 0.5 * (self.lr - end) * (1 + math.cos(math.pi * progress))
        elif self.kind == "range":
            at = min(iteration / max(self.total - 1, 1), 1.0)
            if self.curve == "linear":
                lr = self.lr + (self.range_max - self.lr) * at
            else:
                lr = self.lr * (self.range_max / self.lr) ** at
        else:
            lr = self.lr
        if self.warmup and iteration < self.warmup:
            lr *= (iteration + 1) / self.warmup
        return lr

    def constant_at(self, iteration: int) -> "Schedule":
        """The rate at `iteration`, held (fine-tuning trains at the final rate)."""
        return Schedule(lr=self(iteration), kind="constant", total=self.total)
