"""Early-Bird masks, their distance, and the FIFO test that declares an early-bird ticket (You et al. 2020).

A mask here is one flat bool vector (True = kept) over every BatchNorm channel of the network (channel
masks from |gamma| with one global threshold), or over every prunable weight for networks without
BatchNorm (unstructured global magnitude masks); both sparsity types and the count of a ratio live in
`ticketlab.sparse` (`structure.py`, `count.py`). Consecutive masks are compared by the normalised
Hamming distance; an early bird is declared when the newest of the last `window` (5) masks is within
`epsilon` (0.1) of each of the `window - 1` older ones.
"""

from __future__ import annotations

from collections import deque

import torch
from torch import nn

from ..sparse.structure import bn_layers, channel_scores, global_mask, weight_scores

__all__ = ["EarlyBird", "bn_layers", "distance_matrix", "global_mask", "hamming", "scores"]


def scores(model: nn.Module) -> torch.Tensor:
    """The quantity masks are cut from: |gamma| of every BatchNorm channel, or (no BatchNorm) |w| of every
    prunable weight, as one flat float vector. `global_mask(scores(model), ratio)` is the mask of a ratio:
    it prunes `sparse.count.pruned_count(n, ratio)` entries, the count every pruner in ticketlab uses."""
    return channel_scores(model) if bn_layers(model) else weight_scores(model)


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
