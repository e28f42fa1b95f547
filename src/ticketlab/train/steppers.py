"""Steppers: what the training loop (`train/loop.py`) trains, one optimisation step at a time.

A stepper holds K >= 1 models (`models`, what the callbacks see), their batch orders and one optimizer,
and knows how to take a step, evaluate, and give or take its per-model checkpoint state. Everything that
is the same for every kind of training (step counter, learning rate, running loss, evaluation schedule,
callbacks, RNG and checkpoint files) stays in the loop, so a new way of training is only a stepper.

Here: `ModelStepper` (one network, all its parameters trained) and `SupermaskStepper` (a supermask's
scores trained over frozen weights). The K-models-at-once stepper is `train/stacked.py::StackedStepper`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..data.batches import BatchOrder
from .checkpoint import optimizer_from_flat, optimizer_to_flat
from .evaluate import evaluate
from .optim import make_optimizer

State = tuple[dict[str, torch.Tensor], dict]   # (tensors `model.*` and `opt.*`, optimizer meta) of one model


class Stepper:
    """The interface the loop drives; see the module docstring."""

    models: list[nn.Module]
    device: torch.device
    iterations_per_epoch: int

    def train_mode(self) -> None:
        """Put the models in training mode (after the first evaluation)."""
        raise NotImplementedError

    def forward_backward(self, step: int) -> torch.Tensor:
        """Loss of iteration `step`'s batch (per model: shape [K], or a scalar for K = 1, detached); the
        gradients are left in the parameters for `after_backward` callbacks and `update`."""
        raise NotImplementedError

    def update(self, step: int, lr: float) -> None:
        """The optimizer step at learning rate `lr`."""
        raise NotImplementedError

    def evaluate(self, step: int, lr: float) -> list[dict]:
        """One metrics row per model (the loop adds `train_loss`); `lr` is the rate of the last step taken."""
        raise NotImplementedError

    def state(self) -> list[State]:
        """Per model, what its checkpoint needs beyond the loop's own entries."""
        raise NotImplementedError

    def load_state(self, states: list[State]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Training is over (or was interrupted): hand the models back in their ordinary form."""


class ModelStepper(Stepper):
    """One network on its own seed's batches, cross-entropy loss (with `train.label_smoothing`; evaluation
    reports plain cross-entropy); `params` (default: all of the model's
    parameters) are what the optimizer trains."""

    def __init__(self, model: nn.Module, data: Dataset, train, *, seed: int, params=None,
                 device: torch.device | None = None):
        self.model, self.models = model, [model]
        self.device = device if device is not None else next(model.parameters()).device
        self.data, self.eval_batch_size = data, train.eval_batch_size
        self.label_smoothing = float(getattr(train, "label_smoothing", 0.0))
        self.order = BatchOrder(data, train.batch_size, seed, augment=True)
        self.iterations_per_epoch = self.order.iterations_per_epoch
        trained = list(model.parameters() if params is None else params)
        self.opt = make_optimizer(trained, train, self.device)
        self.params = [p for p in trained if p.requires_grad]

    def train_mode(self) -> None:
        self.model.train()

    def loss(self, step: int) -> torch.Tensor:
        x, y = self.order.batch(step)
        return F.cross_entropy(self.model(x), y, label_smoothing=self.label_smoothing)

    def forward_backward(self, step: int) -> torch.Tensor:
        loss = self.loss(step)
        for p in self.params:
            p.grad = None
        loss.backward()
        return loss.detach()

    def update(self, step: int, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()

    def evaluate(self, step: int, lr: float) -> list[dict]:
        loss, acc = evaluate(self.model, self.data.test_x, self.data.test_y, self.eval_batch_size)
        row = {"step": step, "test_loss": loss, "test_accuracy": acc, "lr": lr}
        if hasattr(self.opt, "preconditioners"):   # FOP: what its learned preconditioners do, per layer
            row.update(self.opt.preconditioners({p: n for n, p in self.model.named_parameters()}))
        return [row]

    def state(self) -> list[State]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt_tensors, opt_meta = optimizer_to_flat(self.opt)
        tensors.update(opt_tensors)
        return [(tensors, opt_meta)]

    def load_state(self, states: list[State]) -> None:
        (tensors, opt_meta), = states
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer_from_flat(self.opt, {k: v.to(self.device) if k.startswith("opt.") and v.dim() else v
                                       for k, v in tensors.items()}, opt_meta)


class SupermaskStepper(ModelStepper):
    """A supermask (`sparse.supermask.Supermask`): only its scores are trained; each step's forward pass
    samples its mask from `generator(step)` (a pure function of the step, so a resumed run draws the same
    masks without any RNG state). Its evaluation is the experiment's own (`evaluate(step)`: a sampled
    test mask, and the expected mask), since what a supermask's accuracy means is the experiment's choice."""

    def __init__(self, supermask: nn.Module, data: Dataset, train, *, seed: int,
                 generator: Callable[[int], torch.Generator], evaluate: Callable[[int], dict],
                 device: torch.device | None = None):
        super().__init__(supermask, data, train, seed=seed, params=supermask.scores.parameters(), device=device)
        self.generator, self._evaluate = generator, evaluate

    def loss(self, step: int) -> torch.Tensor:
        x, y = self.order.batch(step)
        self.model.generator = self.generator(step)
        return F.cross_entropy(self.model(x), y, label_smoothing=self.label_smoothing)

    def evaluate(self, step: int, lr: float) -> list[dict]:
        return [self._evaluate(step)]
