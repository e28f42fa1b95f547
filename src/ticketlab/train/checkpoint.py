"""Where the training loop keeps its checkpoints, and the optimizer state flattened into them.

One format for every stepper (a checkpoint per model): safetensors tensors `model.*` (the model's state
dict), `opt.<param index>.<name>` (optimizer tensors), `rng.cpu` (and `rng.cuda` on CUDA),
`running_loss` and `callback.*` (the callbacks' state), plus JSON state `{step, count, metrics,
optimizer: {param_groups, scalars}}`. A unit checkpointed by one stepper can therefore be resumed by
another (stacked or alone): the per-model optimizer indices are those of a lone model.
"""

from __future__ import annotations

import time

import torch

CHECKPOINT_SECONDS = 10.0


class Checkpoints:
    """Where `fit` keeps its checkpoints: a store unit, or nothing.

    `every` > 0 saves at every multiple of `every` steps; 0 saves at evaluations at most every
    `CHECKPOINT_SECONDS` (so short runs are not slowed down by writing checkpoints)."""

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
    """(tensors `opt.<pid>.<name>`, JSON meta {param_groups, scalars}) of an optimizer's state."""
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
    """Load what `optimizer_to_flat` gave (other keys of `tensors` are ignored)."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
