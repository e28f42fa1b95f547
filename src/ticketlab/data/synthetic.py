"""`synthetic`: a small, deterministic, learnable image set for tests (no files, generated in milliseconds).

10 classes; inputs [N, 1, 16, 16]; 600 train / 200 test, classes balanced (60 / 20 each).
Each class has a fixed template: a random 4x4 pattern upsampled bilinearly to 16x16, so the inputs are
smooth images that MLPs and convnets alike can use. A sample is its class template plus i.i.d. Gaussian
noise (std NOISE, relative to templates of unit variance); the whole set is then scaled to unit variance.

The templates never change (their generator has a fixed seed); the noise and the order of samples are
drawn from generators seeded by `data_seed`, with separate streams for the training and test sets.
NOISE is set so that a linear classifier is far above chance (10%) after a few hundred steps but not at
100% at once, leaving room for pruning to make a difference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ticketlab.seeding import generator

NUM_CLASSES = 10
SIDE = 16
NUM_TRAIN = 600
NUM_TEST = 200
NOISE = 3.0


def templates() -> torch.Tensor:
    """[10, 1, 16, 16] class templates with zero mean and unit variance each (fixed)."""
    low = torch.randn(NUM_CLASSES, 1, 4, 4, generator=generator("synthetic/templates"))
    t = F.interpolate(low, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    t = t - t.mean(dim=(1, 2, 3), keepdim=True)
    return t / t.std(dim=(1, 2, 3), keepdim=True)


def _draw(tmpl: torch.Tensor, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(n, dtype=torch.int64) % NUM_CLASSES
    y = y[torch.randperm(n, generator=g)]
    x = tmpl[y] + NOISE * torch.randn(n, 1, SIDE, SIDE, generator=g)
    # Templates have unit variance and the noise is independent, so this scales inputs to about unit variance.
    return x / (1.0 + NOISE**2) ** 0.5, y


def make_synthetic(data_seed: int = 0):
    from ticketlab.data import Dataset

    tmpl = templates()
    train_x, train_y = _draw(tmpl, NUM_TRAIN, generator("synthetic/train", data_seed))
    test_x, test_y = _draw(tmpl, NUM_TEST, generator("synthetic/test", data_seed))
    return Dataset(
        name="synthetic",
        train_x=train_x.contiguous(),
        train_y=train_y,
        test_x=test_x.contiguous(),
        test_y=test_y,
        num_classes=NUM_CLASSES,
    )
