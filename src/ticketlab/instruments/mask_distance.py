"""Early-Bird masks, their distance, and the FIFO test that declares an early-bird ticket (You et al. 2020).

A mask here is one flat bool vector (True = kept) over every BatchNorm channel of the network (channel
masks from |gamma| with one global threshold), or over every prunable weight for networks without
BatchNorm (unstructured global magnitude masks). Consecutive masks are compared by the normalised
Hamming distance; an early bird is declared when the newest of the last `window` (5) masks is within
`epsilon` (0.1) of each of the `window - 1` older ones.
"""

from __future__ import annotations

from collections import deque

import torch
from torch import nn

from .. import models


def bn_layers(model: nn.Module) -> list[str]:
    """Module names of the affine BatchNorm layers, in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]


def scores(model: nn.Module) -> torch.Tensor:
    """The quantity masks are cut from: |gamma| of every BatchNorm channel, or (no BatchNorm) |w| of every
    prunable weight, as one flat float vector."""
    modules = dict(model.named_modules())
    bns = bn_layers(model)
    if bns:
        return torch.cat([modules[n].weight.detach().abs().reshape(-1).cpu() for n in bns])
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().abs().reshape(-1).cpu() for n in models.prunable_names(model)])


def global_mask(values: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep all but the `round(ratio * n)` smallest values (ties broken by position, so exactly that many go)."""
    n = values.numel()
    pruned = int(round(ratio * n))
    keep = torch.ones(n, dtype=torch.bool)
    if pruned:
        order = torch.sort(values.double(), stable=True).indices
        keep[order[:pruned]] = False
    return keep


def hamming(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised Hamming distance: the fraction of positions where two masks differ."""
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a != b).sum()) / max(a.numel(), 1)


def distance_matrix(masks: list[torch.Tensor]) -> torch.Tensor:
    stack = torch.stack(masks).float()
    n = stack.shape[1]
    # |a - b| summed = a + b - 2 a.b for 0/1 vectors
    ones = stack.sum(1)
    return (ones[:, None] + ones[None, :] - 2 * stack @ stack.T) / max(n, 1)


class EarlyBird:
    """FIFO of the last `window` masks; `push` returns True once the newest is within `epsilon` of all older."""

    def __init__(self, window: int = 5, epsilon: float = 0.1):
        self.window, self.epsilon = window, epsilon
        self.masks: deque[torch.Tensor] = deque(maxlen=window)

    def push(self, mask: torch.Tensor) -> bool:
        self.masks.append(mask)
        return self.found()

    def found(self) -> bool:
        if len(self.masks) < self.window:
            return False
        newest = self.masks[-1]
        return all(hamming(newest, older) < self.epsilon for older in list(self.masks)[:-1])
