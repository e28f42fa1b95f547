"""Seeded, resumable batch order over an in-memory data set.

`BatchOrder.batch(it)` is a pure function of (seed, it):
  * epoch e = it // iterations_per_epoch shuffles the training set with `torch.randperm` drawn from a
    generator seeded by `derive_seed("epoch", seed, e)`;
  * batch i = it % iterations_per_epoch is slice [i*B, (i+1)*B) of that permutation (the last batch of an
    epoch holds the remainder, so every sample is seen exactly once per epoch);
  * augmentation (if the data set has one and augment=True) draws from a generator seeded by
    `derive_seed("augment", seed, it)`.
So a run resumed at step s sees exactly the batches of an uninterrupted run, without replaying anything.
See `ticketlab.seeding` for the seed mix.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator

import torch

from ticketlab.seeding import generator
from ticketlab.errors import UserError

if TYPE_CHECKING:
    from ticketlab.data import Dataset


class BatchOrder:
    """Batches of `dataset`'s training set by iteration number; see the module docstring."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, augment: bool = True):
        n = len(dataset.train_y)
        if int(batch_size) < 1:
            raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
        if n == 0:
            raise UserError(f"data set {dataset.name} has no training samples")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.augment = bool(augment)
        self._augment_fn = dataset.augment if augment else None
        self.num_train = n
        self.iterations_per_epoch: int = math.ceil(n / self.batch_size)
        # Only the current epoch's permutation is kept: consecutive calls cost one slice and one index.
        self._epoch: int | None = None
        self._perm: torch.Tensor | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order (int64 indices into the training set) of epoch `epoch`."""
        if epoch != self._epoch:
            self._perm = torch.randperm(self.num_train, generator=generator("epoch", self.seed, epoch))
            self._epoch = epoch
        return self._perm

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of training iteration `iteration` (0-based)."""
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        epoch, i = divmod(int(iteration), self.iterations_per_epoch)
        idx = self.permutation(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        # index_select is ~5x faster than advanced indexing of a 4-D tensor on CPU (16 vs 86 us, batch 60)
        x = self.dataset.train_x.index_select(0, idx)
        y = self.dataset.train_y.index_select(0, idx)
        if self._augment_fn is not None:
            x = self._augment_fn(x, generator("augment", self.seed, iteration))
        return x, y


def evaluation_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive (x, y) slices of at most `batch_size` samples, in order, without augmentation (views, no copies)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(y), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]
