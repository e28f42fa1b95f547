"""Targeted forgetting (Zhou et al. 2022, Sec. 3): does forgetting hurt some examples more than others?

A callback of the training loop (`train/callbacks.py`): every `every` steps it copies the network, applies each
forgetting operation (`sparse/forget.py`) to its own copy, and measures the training examples of two groups
before and after: accuracy (agreement with the label the network is trained on, so for mislabeled examples it
measures memorisation), mean cross-entropy and mean predictive entropy. The network being trained is never
changed (copies only, no draw from the global generator), so a run with the probe trains exactly as one without.

Groups (`groups`):
  labels   mislabeled = the examples whose labels `--random-labels` randomised, clean = the others.
  margin   hard = the `HARD_FRACTION` of training examples with the lowest margin at that probe, the logit of
           their (training) label minus the largest other logit of the network before forgetting (count rule of
           `sparse/count.py`, ties to the lower index); rest = the others.

Unlike the authors' script, which measures on the current minibatch of 128 and defines the margin as the top-1
minus the top-2 softmax probability, every probe here measures the whole training set (no augmentation), in
evaluation mode.

The rows travel in the checkpoints (a float tensor), so a resumed training has every probe an uninterrupted one
has.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..sparse.count import pruned_count
from ..sparse.forget import Forgetting, forget_
from ..train.callbacks import Callback

HARD_FRACTION = 0.1
GROUP_NAMES = {"labels": ("clean", "mislabeled"), "margin": ("rest", "hard")}
NUMBERS = ("size", "accuracy_before", "accuracy_after", "loss_before", "loss_after", "entropy_before", "entropy_after")
COLUMNS = ("method", "step", "group", *NUMBERS)


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's logits on `x` in evaluation mode (its mode restored)."""
    was = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was)


def group_stats(logits: torch.Tensor, y: torch.Tensor, member: torch.Tensor) -> tuple[dict, dict]:
    """(outside, inside) the group `member` (bool per example): size, accuracy, mean loss, mean entropy."""
    correct = (logits.argmax(1) == y).double()
    loss = F.cross_entropy(logits, y, reduction="none").double()
    logp = F.log_softmax(logits.double(), 1)
    entropy = -(logp.exp() * logp).sum(1)
    out = []
    for part in (~member, member):
        n = int(part.sum())
        mean = lambda v: float(v[part].mean()) if n else float("nan")
        out.append({"size": n, "accuracy": mean(correct), "loss": mean(loss), "entropy": mean(entropy)})
    return out[0], out[1]


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The logit of each example's label minus its largest other logit (negative: misclassified)."""
    own = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).max(1).values
    return own - other


def hardest(logits: torch.Tensor, y: torch.Tensor, fraction: float = HARD_FRACTION) -> torch.Tensor:
    """Bool per example: the `fraction` with the lowest margin (count rule; ties to the lower index)."""
    n = len(y)
    order = torch.argsort(margins(logits, y), stable=True)
    member = torch.zeros(n, dtype=torch.bool, device=logits.device)
    member[order[:pruned_count(n, fraction)]] = True
    return member


class TargetedForgetting(Callback):
    """The probe; `rows()` gives its measurements (one per probe step, method and group)."""

    stackable = False   # it evaluates its own model on the whole training set

    def __init__(self, operations: dict[str, Forgetting], x: torch.Tensor, y: torch.Tensor, *, every: int, seed: int,
                 init_state: dict[str, torch.Tensor], groups: str = "labels", mislabeled: torch.Tensor | None = None,
                 batch_size: int = 10000):
        if groups not in GROUP_NAMES:
            raise ValueError(f"groups must be one of {', '.join(GROUP_NAMES)}, got {groups!r}")
        if groups == "labels" and (mislabeled is None or not len(mislabeled)):
            raise ValueError("groups 'labels' needs the indices of the mislabeled examples")
        self.operations, self.x, self.y = dict(operations), x, y
        self.every, self.seed, self.init_state, self.groups = int(every), int(seed), init_state, groups
        self.batch_size = batch_size
        self.member = None
        if groups == "labels":
            self.member = torch.zeros(len(y), dtype=torch.bool, device=y.device)
            self.member[mislabeled.to(y.device)] = True
        self.table = torch.zeros(0, 3 + len(NUMBERS), dtype=torch.float64)   # method index, step, group index, numbers

    def after_step(self, step: int, model: nn.Module) -> None:
        if step % self.every == 0:
            self.probe(step, model)

    def probe(self, step: int, model: nn.Module) -> None:
        before = logits_of(model, self.x, self.batch_size)
        member = self.member if self.member is not None else hardest(before, self.y)
        groups_before = group_stats(before, self.y, member)
        rows = []
        for index, op in enumerate(self.operations.values()):
            twin = copy.deepcopy(model)
            forget_(twin, op, init_state=self.init_state, seed=self.seed, generation=step)
            groups_after = group_stats(logits_of(twin, self.x, self.batch_size), self.y, member)
            for g, (b, a) in enumerate(zip(groups_before, groups_after)):
                rows.append([index, step, g, b["size"], b["accuracy"], a["accuracy"], b["loss"], a["loss"],
                             b["entropy"], a["entropy"]])
        self.table = torch.cat([self.table, torch.tensor(rows, dtype=torch.float64)])

    def rows(self) -> list[dict]:
        methods, names = list(self.operations), GROUP_NAMES[self.groups]
        out = []
        for r in self.table.tolist():
            out.append({"method": methods[int(r[0])], "step": int(r[1]), "group": names[int(r[2])],
                        "size": int(r[3]), **dict(zip(NUMBERS[1:], r[4:]))})
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"rows": self.table.clone()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.table = tensors["rows"].to(torch.float64).clone()
