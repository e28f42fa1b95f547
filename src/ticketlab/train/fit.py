"""The fit loop: one network, optionally masked, from iteration `start` to `end`, resumable exactly.

Batches are a pure function of (seed, iteration) (`data.batches.BatchOrder`), so a run resumed from a
checkpoint needs no replay: the checkpoint holds the weights, the optimizer state, the global RNG state
(dropout), the iteration, the metrics so far and the running train loss, and training continues with
exactly the numbers an uninterrupted run gives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import seeding, steps
from ..data import Dataset
from ..data.batches import BatchOrder
from ..sparse import Mask
from .evaluate import evaluate
from .optim import Schedule, make_optimizer

CHECKPOINT_SECONDS = 10.0


@dataclass
class FitResult:
    metrics: list[dict] = field(default_factory=list)   # one row per evaluation
    final_accuracy: float = float("nan")
    final_loss: float = float("nan")
    best_accuracy: float = float("nan")
    best_step: int = 0
    early_stop_step: int = 0          # step of the lowest test loss (Frankle & Carbin's early-stopping iteration)
    early_stop_accuracy: float = float("nan")
    steps: int = 0

    @classmethod
    def from_metrics(cls, metrics: list[dict], steps_trained: int) -> "FitResult":
        last = metrics[-1]
        best = max(metrics, key=lambda r: r["test_accuracy"])
        early = min(metrics, key=lambda r: r["test_loss"])
        return cls(metrics, last["test_accuracy"], last["test_loss"], best["test_accuracy"], best["step"],
                   early["step"], early["test_accuracy"], steps_trained)

    def summary(self) -> dict:
        return {"test_accuracy": self.final_accuracy, "test_loss": self.final_loss, "best_accuracy": self.best_accuracy,
                "best_step": self.best_step, "early_stop_step": self.early_stop_step,
                "early_stop_accuracy": self.early_stop_accuracy, "train_steps": self.steps}


class Checkpoints:
    """Where `fit` keeps its checkpoints: a store unit, or nothing."""

    def __init__(self, unit=None, every: int = 0):
        self.unit, self.every = unit, every
        self._last = time.monotonic()

    def due(self, step: int, at_eval: bool) -> bool:
        if self.unit is None:
            return False
        if self.every:
            return step % self.every == 0
        if at_eval and time.monotonic() - self._last >= CHECKPOINT_SECONDS:
            return True
        return False

    def save(self, tensors, state):
        self.unit.save_checkpoint(tensors, state)
        self._last = time.monotonic()

    def load(self):
        return self.unit.load_checkpoint() if self.unit is not None else None

    def resume_step(self) -> int | None:
        """The step the newest intact checkpoint would resume from (None: start afresh)."""
        loaded = self.load()
        return None if loaded is None else int(loaded[1]["step"])


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def fit(model: nn.Module, data: Dataset, train, *, seed: int, start: int, end: int, schedule: Schedule,
        mask: Mask | None = None, checkpoints: Checkpoints | None = None,
        progress: Callable[[int], None] | None = None, on_step: Callable[[int, nn.Module], None] | None = None,
        callbacks=None) -> FitResult:
    """Train `model` in place on iterations [start, end) and evaluate every `train.eval_every`.

    `data` must already be on the model's device. `on_step(step, model)` is called after each completed
    iteration (e.g. to capture the weights at a rewind point).

    `callbacks` (optional) is an instrument that watches training: `before_step(step, model)` is called
    before iteration `step` and `after_step(step + 1, model)` once its update (and the mask) is applied;
    `after_step` returning True ends training there (evaluated at that step). An optional
    `after_backward(step, model)` may change the gradients before the optimizer step (a penalty's
    subgradient, say).
    If it has `state_dict()` / `load_state_dict(tensors)` (tensors only), its state travels in the
    checkpoints under the `callback.` prefix, so a resumed run gives the callback exactly what an
    uninterrupted one would.
    """
    device = next(model.parameters()).device
    order = BatchOrder(data, train.batch_size, seed, augment=True)
    every = max(steps.resolve(train.eval_every, order.iterations_per_epoch), 1)
    opt = make_optimizer(model.parameters(), train, device)
    checkpoints = checkpoints or Checkpoints()
    metrics: list[dict] = []
    running = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    step = start
    torch.manual_seed(seeding.derive_seed("fit", seed, start))

    resumed = checkpoints.load()
    if resumed is not None:
        tensors, state = resumed
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer_from_flat(opt, {k: v.to(device) if k.startswith("opt.") and v.dim() else v for k, v in tensors.items()}, state["optimizer"])
        torch.set_rng_state(tensors["rng.cpu"])
        if device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        running = tensors["running_loss"].to(device)
        count, step, metrics = state["count"], state["step"], state["metrics"]
        if callbacks is not None and hasattr(callbacks, "load_state_dict"):
            callbacks.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("callback.")})
    if mask is not None:
        mask.apply_(model)

    def record(at: int) -> None:
        nonlocal running, count
        test_loss, test_acc = evaluate(model, data.test_x, data.test_y, train.eval_batch_size)
        row = {"step": at, "test_loss": test_loss, "test_accuracy": test_acc, "lr": schedule(max(at - 1, start))}
        row["train_loss"] = (running / count).item() if count else None
        metrics.append(row)
        running.zero_()
        count = 0

    def snapshot() -> None:
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        opt_tensors, opt_meta = optimizer_to_flat(opt)
        tensors.update(opt_tensors)
        tensors["rng.cpu"] = torch.get_rng_state()
        if device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        tensors["running_loss"] = running
        if callbacks is not None and hasattr(callbacks, "state_dict"):
            tensors.update({f"callback.{k}": v for k, v in callbacks.state_dict().items()})
        checkpoints.save(tensors, {"step": step, "count": count, "metrics": metrics, "optimizer": opt_meta})

    if not metrics:
        record(start)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    after_backward = getattr(callbacks, "after_backward", None)
    while step < end:
        if callbacks is not None:
            callbacks.before_step(step, model)
        x, y = order.batch(step)
        loss = F.cross_entropy(model(x), y)
        for p in params:
            p.grad = None
        loss.backward()
        if after_backward is not None:
            after_backward(step, model)
        lr = schedule(step)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        if mask is not None:
            mask.apply_(model)
        running += loss.detach()
        count += 1
        step += 1
        stop = callbacks is not None and callbacks.after_step(step, model) is True
        if on_step is not None:
            on_step(step, model)
        at_eval = step % every == 0 or step == end or stop
        if at_eval:
            record(step)
        if step < end and checkpoints.due(step, at_eval):
            snapshot()
        if progress is not None:
            progress(step - start)
        if stop:
            break
    return FitResult.from_metrics(metrics, step - start)
