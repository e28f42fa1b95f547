"""Callbacks: everything that watches or adjusts training goes through this one protocol.

The loop calls, for each model it trains, that model's callbacks in list order:

  attach(stepper, k)           once, before anything else: the stepper training this model (`stepper.models[k]`),
                               for callbacks that must reach its optimizer (SET/RigL reset the state of regrown weights)
  on_start(step, model)        once, after a resume and before the first evaluation (step = where training
                               starts or resumes)
  before_step(step, model)     before iteration `step`
  after_backward(step, model)  gradients computed, optimizer not yet stepped (a penalty's subgradient, say)
  after_step(step, model)      iteration done (step = iterations completed); True ends training there
  on_eval(step, row)           a metrics row was recorded
  finish()                     training reached its end (not called when it was interrupted)

State that must survive an interruption (`state_dict()` / `load_state_dict(tensors)`, tensors only)
travels in the checkpoints, so a resumed run gives every callback exactly what an uninterrupted one would.
Objects that are not `Callback`s but have some of these methods (duck typing) work too.

Order matters where callbacks touch the weights: `ApplyMask` comes first so that every later callback
sees the masked update; `Progress` comes last.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ..sparse import Mask


class Callback:
    """The no-op base of the protocol above; override what you need.

    `stackable`: the callback only reads or writes its own model (through the `model` argument and its
    state dict), so it may run on a model trained stacked with others. Callbacks that cannot stack (say,
    one that stops training early, which would stop every model of the stack) keep the default False and
    their model is trained alone."""

    stackable: bool = False

    def attach(self, stepper, index: int) -> None:
        pass

    def on_start(self, step: int, model: nn.Module) -> None:
        pass

    def before_step(self, step: int, model: nn.Module) -> None:
        pass

    def after_backward(self, step: int, model: nn.Module) -> None:
        pass

    def after_step(self, step: int, model: nn.Module) -> bool | None:
        return None

    def on_eval(self, step: int, row: dict) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def finish(self) -> None:
        pass


def as_list(callbacks) -> list:
    """None, one callback, or a list/tuple of them -> a new list."""
    if callbacks is None:
        return []
    if isinstance(callbacks, (list, tuple)):
        return list(callbacks)
    return [callbacks]


def has_state(callback) -> bool:
    """Whether `callback` keeps state for the checkpoints (overrides `state_dict`, or has one, duck-typed)."""
    method = getattr(type(callback), "state_dict", None)
    return method is not None and method is not Callback.state_dict


def state_prefixes(callbacks: Iterable) -> list[tuple[object, str]]:
    """(callback, checkpoint key prefix) of the callbacks with state: `callback.` when there is one (the
    format of checkpoints written before callbacks were a list, so they stay loadable), else
    `callback.<i>.` with i counting the callbacks with state in list order."""
    stateful = [cb for cb in callbacks if has_state(cb)]
    if len(stateful) == 1:
        return [(stateful[0], "callback.")]
    return [(cb, f"callback.{i}.") for i, cb in enumerate(stateful)]


class ApplyMask(Callback):
    """Keeps a model's pruned weights at their fill (zero, or the mask's fill values): applied when
    training starts and after every optimizer step."""

    stackable = True

    def __init__(self, mask: Mask):
        self.mask = mask

    def on_start(self, step: int, model: nn.Module) -> None:
        self.mask.apply_(model)

    def after_step(self, step: int, model: nn.Module) -> None:
        self.mask.apply_(model)


class Progress(Callback):
    """Reports the number of iterations done in this window, `report(step - start)`, after every step."""

    stackable = True

    def __init__(self, report: Callable[[int], None], start: int = 0):
        self.report, self.start = report, start

    def after_step(self, step: int, model: nn.Module) -> None:
        self.report(step - self.start)


class OnStep(Callback):
    """Calls `fn(step, model)` after every step (what `fit(on_step=...)` was; e.g. a test's kill switch)."""

    stackable = True

    def __init__(self, fn: Callable[[int, nn.Module], None]):
        self.fn = fn

    def after_step(self, step: int, model: nn.Module) -> None:
        self.fn(step, model)


class Snapshot(Callback):
    """The model's weights (its state dict, CPU clones) at given steps: `weights[k]`.

    Step k is captured when the step counter reaches k: k equal to where training starts means the start
    weights (after the mask, if any, is applied), any other k the weights after iteration k - 1. The captures
    travel in the checkpoints, so a run interrupted after step k and resumed still has w_k. Stackable: a
    stacked model's state dict is its own weights and BatchNorm statistics."""

    stackable = True

    def __init__(self, steps: Iterable[int]):
        self.steps = {int(k) for k in steps}
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def captured(self) -> dict[int, dict[str, torch.Tensor]]:
        """The same as `weights` (both names are in use)."""
        return self.weights

    def capture(self, step: int, model: nn.Module) -> None:
        if step in self.steps and step not in self.weights:
            self.weights[step] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def on_start(self, step: int, model: nn.Module) -> None:
        self.capture(step, model)

    def after_step(self, step: int, model: nn.Module) -> None:
        self.capture(step, model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{k}.{name}": v for k, state in self.weights.items() for name, v in state.items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.weights = {}
        for key, v in tensors.items():
            k, name = key.split(".", 1)
            self.weights.setdefault(int(k), {})[name] = v


def assemble(mask: Mask | None, callbacks, *, progress: Callable[[int], None] | None = None,
             start: int = 0) -> list:
    """The callbacks of one model in the order the loop needs: the mask first, the caller's callbacks,
    progress last."""
    out = [ApplyMask(mask)] if mask is not None else []
    out += as_list(callbacks)
    if progress is not None:
        out.append(Progress(progress, start))
    return out
