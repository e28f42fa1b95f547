"""Sparsity that changes while a network trains: the schedules and the mask updates of gradual magnitude
pruning and of dynamic sparse training (the callbacks that apply them are `train/sparse_callbacks.py`).

GMP (Zhu & Gupta 2017)   target sparsity at step t, pruning every dt steps from t0 for n steps:
                             s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3
                         `gmp_sparsity`; the steps that prune: `gmp_steps`. Each pruning keeps, per layer
                         (or per pool with global allocation), the count rule's count at density 1 - s_t
                         (`count.kept_count`), by magnitude among the weights still kept.
SET / RigL               every dt steps until `end` (Mocanu et al. 2018; Evci et al. 2020): drop the
(Evci et al. 2020)       `pruned_count(active, alpha_t)` smallest-magnitude active weights of a layer and grow
                         as many among the weights not kept after the drop (RigL's code: a weight just
                         dropped may come back, at zero): at random (SET) or where the dense gradient is
                         largest (RigL). alpha_t = alpha / 2 (1 + cos(pi t / end)) (`cosine_drop_fraction`),
                         so every layer keeps exactly its count at every update.
"""

from __future__ import annotations

import math

import torch

from .count import pruned_count

GROWTH: tuple[str, ...] = ("set", "rigl")


def gmp_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's cubic schedule: `initial` up to `start`, `final` from `end` on, the cubic in between."""
    if step <= start:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3


def gmp_steps(start: int, end: int, every: int) -> list[int]:
    """The steps (iterations completed) at which GMP prunes: start + k every for k >= 1 before `end`, and
    `end` itself (so the final sparsity is reached at `end` even when `every` does not divide the span)."""
    every = max(int(every), 1)
    return list(range(start + every, end, every)) + [end] if end > start else [end]


def cosine_drop_fraction(step: int, alpha: float, end: int) -> float:
    """RigL's drop fraction at `step`: alpha / 2 (1 + cos(pi step / end)), 0 from `end` on."""
    if step >= end or end <= 0:
        return 0.0
    return 0.5 * alpha * (1.0 + math.cos(math.pi * step / end))


def drop_and_grow(weight: torch.Tensor, mask: torch.Tensor, fraction: float, growth: str, *,
                  grad: torch.Tensor | None = None, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's update: (new flat bool mask, flat indices of the weights grown), on `weight`'s device.

    Drops `pruned_count(active, fraction)` active weights of smallest |weight| and grows as many among the
    positions not kept after the drop: the largest |grad| (RigL) or uniformly at random from `generator` (SET;
    a CPU generator). Selection by `torch.topk` (a partial selection: a full sort made an update of LeNet-300-100
    3x slower), whose choice among exact ties is deterministic for a given input. The count of kept weights
    is unchanged."""
    flat = mask.to(weight.device).flatten()
    active = flat.nonzero().squeeze(1)
    count = pruned_count(int(active.numel()), fraction)
    if count == 0:
        return flat.clone(), active[:0]
    magnitude = weight.detach().flatten()[active].abs()
    dropped = active[torch.topk(magnitude, count, largest=False, sorted=False).indices]
    new = flat.clone()
    new[dropped] = False
    candidates = (~new).nonzero().squeeze(1)
    if growth == "rigl":
        if grad is None:
            raise ValueError("drop_and_grow: RigL grows by the dense gradient, and there is none (no backward pass yet)")
        score = grad.detach().flatten()[candidates].abs()
        pick = torch.topk(score, count, sorted=False).indices
    elif growth == "set":
        pick = torch.randperm(int(candidates.numel()), generator=generator)[:count].to(candidates.device)
    else:
        raise ValueError(f"unknown growth {growth!r}; valid: {', '.join(GROWTH)}")
    grown = candidates[pick]
    new[grown] = True
    return new, grown
