"""The training loop: one loop for every kind of training, resumable exactly.

What is trained, and how one optimisation step is taken, is the stepper's business (`train/steppers.py`:
one model or a supermask's scores; `train/stacked.py`: K models in one step). The loop owns everything
else, once: the step counter, the learning rate of each step, the running train loss, evaluation at every
`eval_every` steps and at the end, the callbacks, and checkpoints (one per model, in one format,
`train/checkpoint.py`).

Batches are a pure function of (seed, iteration) (`data.batches.BatchOrder`), so a run resumed from a
checkpoint needs no replay: the checkpoint holds the weights, the optimizer state, the global RNG state
(dropout), the iteration, the metrics so far, the running train loss and the callbacks' state, and
training continues with exactly the numbers an uninterrupted run gives.

Divergence: at every evaluation the loop looks at the running train loss it already keeps (and the test
loss); a non-finite one marks that model diverged (`FitResult.diverged_step` / `diverged_reason`: the
evaluation that saw it and the steps the running mean covers), its metrics row there holds nulls, and it
records no further rows. A lone model stops there; in a stack the others go on unchanged (a model's
numbers never depend on the others'), and training ends once every model diverged. No per-step check, so
no per-step device sync: a diverged model trains on at most `eval_every` steps before it is seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .callbacks import state_prefixes
from .checkpoint import Checkpoints
from .optim import Schedule


@dataclass
class FitResult:
    metrics: list[dict] = field(default_factory=list)   # one row per evaluation
    final_accuracy: float | None = float("nan")
    final_loss: float | None = float("nan")
    best_accuracy: float | None = float("nan")
    best_step: int | None = 0
    early_stop_step: int | None = 0   # step of the lowest test loss (Frankle & Carbin's early-stopping iteration)
    early_stop_accuracy: float | None = float("nan")
    steps: int = 0
    diverged_step: int | None = None  # the evaluation that found a non-finite loss (None: did not diverge)
    diverged_reason: str | None = None

    @property
    def diverged(self) -> bool:
        return self.diverged_step is not None

    @classmethod
    def from_metrics(cls, metrics: list[dict], steps_trained: int, diverged: dict | None = None) -> "FitResult":
        if diverged is not None:   # what the model reached before is no result of it: nothing to report
            return cls(metrics, None, None, None, None, None, None, steps_trained, diverged["step"], diverged["reason"])
        last = metrics[-1]
        best = max(metrics, key=lambda r: r["test_accuracy"])
        early = min(metrics, key=lambda r: r["test_loss"])
        return cls(metrics, last["test_accuracy"], last["test_loss"], best["test_accuracy"], best["step"],
                   early["step"], early["test_accuracy"], steps_trained)

    def divergence(self) -> dict:
        """The fields a diverged unit's result.json gets ({} when it did not diverge)."""
        if not self.diverged:
            return {}
        return {"diverged": True, "diverged_step": self.diverged_step, "diverged_reason": self.diverged_reason}

    def summary(self) -> dict:
        return {"test_accuracy": self.final_accuracy, "test_loss": self.final_loss, "best_accuracy": self.best_accuracy,
                "best_step": self.best_step, "early_stop_step": self.early_stop_step,
                "early_stop_accuracy": self.early_stop_accuracy, "train_steps": self.steps, **self.divergence()}


def divergence_of(row: dict, at: int, since: int) -> dict | None:
    """{step, reason} if a metrics row has a non-finite train or test loss (the train loss is the mean of
    the steps after `since`), else None."""
    for name, what in (("train_loss", "training loss"), ("test_loss", "test loss")):
        value = row.get(name)
        if isinstance(value, float) and not math.isfinite(value):
            span = f" (mean of steps {since + 1}-{at})" if name == "train_loss" and at > since + 1 else ""
            return {"step": at, "reason": f"non-finite {what} ({value}) at step {at}{span}"}
    return None


def diverged_row(row: dict) -> dict:
    """The metrics row of the evaluation that found a divergence: the step and learning rate, every
    measurement null."""
    return {**{k: (v if k in ("step", "lr") else None) for k, v in row.items()}, "diverged": True}


def _hooks(callbacks: Sequence, name: str) -> list:
    """The bound `name` methods of `callbacks` (duck-typed callbacks may lack some)."""
    return [getattr(cb, name) for cb in callbacks if hasattr(cb, name)]


def train_loop(stepper, callbacks: Sequence[Sequence], *, start: int, end: int, schedule: Schedule,
               eval_every: int, checkpoints: Sequence[Checkpoints], rng_seed: int | None = None) -> list[FitResult]:
    """Train the stepper's K models on iterations [start, end); one FitResult per model.

    `callbacks[k]` and `checkpoints[k]` belong to model k (`stepper.models[k]`). `rng_seed` seeds the
    global RNG before anything else happens (None: leave it, for steppers that draw from their own
    generators); a resumed run restores the checkpointed RNG state instead. All models resume from the
    same step (one step counter), so checkpoints are saved for all of them at once."""
    models = stepper.models
    count_models = len(models)
    if len(callbacks) != count_models or len(checkpoints) != count_models:
        raise ValueError(f"train_loop: {count_models} models, {len(callbacks)} callback lists, {len(checkpoints)} checkpoints")
    device = stepper.device
    every = max(int(eval_every), 1)
    metrics: list[list[dict]] = [[] for _ in models]
    running = torch.zeros(count_models, dtype=torch.float64, device=device)
    count = 0
    step = start
    if rng_seed is not None:
        torch.manual_seed(rng_seed)
    prefixes = [state_prefixes(cbs) for cbs in callbacks]
    for k, cbs in enumerate(callbacks):   # callbacks that reach the optimizer (RigL/SET reset its state)
        for hook in _hooks(cbs, "attach"):
            hook(stepper, k)
    # one step counter, so one clock decides when all models save (the first that saves at all)
    lead = next((c for c in checkpoints if c.unit is not None), checkpoints[0])
    diverged: list[dict | None] = [None] * count_models   # {step, reason} once model k diverged
    since = start   # the step of the previous evaluation (the running loss covers the steps after it)

    resumed = [c.load() for c in checkpoints]
    if any(r is not None for r in resumed):
        if any(r is None for r in resumed) or len({r[1]["step"] for r in resumed}) != 1:
            raise ValueError("train_loop: models must resume from the same step (group them by checkpoint step)")
        stepper.load_state([(tensors, state["optimizer"]) for tensors, state in resumed])
        first = resumed[0][0]
        if "rng.cpu" in first:
            torch.set_rng_state(first["rng.cpu"])
        if device.type == "cuda" and "rng.cuda" in first:
            torch.cuda.set_rng_state(first["rng.cuda"])
        running = torch.stack([tensors["running_loss"] for tensors, _ in resumed]).to(device)
        count, step = resumed[0][1]["count"], resumed[0][1]["step"]
        metrics = [state["metrics"] for _, state in resumed]
        diverged = [state.get("diverged") for _, state in resumed]
        since = max((m[-1]["step"] for m in metrics if m), default=start)
        for (tensors, _), pairs in zip(resumed, prefixes):
            for cb, prefix in pairs:
                if hasattr(cb, "load_state_dict"):
                    cb.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})

    before = [_hooks(cbs, "before_step") for cbs in callbacks]
    after_backward = [_hooks(cbs, "after_backward") for cbs in callbacks]
    after = [_hooks(cbs, "after_step") for cbs in callbacks]
    on_eval = [_hooks(cbs, "on_eval") for cbs in callbacks]

    def record(at: int) -> None:
        nonlocal count, since
        rows = stepper.evaluate(at, schedule(max(at - 1, start)))
        for k, row in enumerate(rows):
            if diverged[k] is not None:   # no rows after a divergence
                continue
            row = {**row, "train_loss": (running[k] / count).item() if count else None}
            diverged[k] = divergence_of(row, at, since)
            if diverged[k] is not None:
                metrics[k].append(diverged_row(row))
                continue
            metrics[k].append(row)
            for hook in on_eval[k]:
                hook(at, row)
        running.zero_()
        count = 0
        since = at

    def save() -> None:
        states = stepper.state()
        rng_cpu = torch.get_rng_state()
        rng_cuda = torch.cuda.get_rng_state() if device.type == "cuda" else None
        for k, ck in enumerate(checkpoints):
            if ck.unit is None:
                continue
            tensors, opt_meta = states[k]
            tensors["rng.cpu"] = rng_cpu
            if rng_cuda is not None:
                tensors["rng.cuda"] = rng_cuda
            tensors["running_loss"] = running[k]
            for cb, prefix in prefixes[k]:
                tensors.update({f"{prefix}{key}": v for key, v in cb.state_dict().items()})
            extra = {"diverged": diverged[k]} if diverged[k] is not None else {}
            ck.save(tensors, {"step": step, "count": count, "metrics": metrics[k], "optimizer": opt_meta, **extra})

    try:
        for model, cbs in zip(models, callbacks):
            for hook in _hooks(cbs, "on_start"):
                hook(step, model)
        if not metrics[0]:
            record(start)
        stepper.train_mode()
        while step < end and not all(d is not None for d in diverged):
            for model, hooks in zip(models, before):
                for hook in hooks:
                    hook(step, model)
            losses = stepper.forward_backward(step)
            for model, hooks in zip(models, after_backward):
                for hook in hooks:
                    hook(step, model)
            stepper.update(step, schedule(step))
            running += losses
            count += 1
            step += 1
            stop = False
            for model, hooks in zip(models, after):
                for hook in hooks:
                    stop = (hook(step, model) is True) or stop
            at_eval = step % every == 0 or step == end or stop
            if at_eval:
                record(step)
                if all(d is not None for d in diverged):   # nothing left worth training
                    break
            if step < end and lead.due(step, at_eval):
                save()
            if stop:
                break
    finally:
        stepper.close()
    for cbs in callbacks:
        for hook in _hooks(cbs, "finish"):
            hook()
    return [FitResult.from_metrics(m, (d["step"] if d else step) - start, d) for m, d in zip(metrics, diverged)]
