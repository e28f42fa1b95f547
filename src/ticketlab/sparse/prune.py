"""IMP pruning: scoring (`criteria.py`) + allocation (`allocation.py`) + level schedule (`schedule.py`) +
unstructured selection (`structure.lowest`), composed by `prune`; `keep_top` keeps given counts per pool of
layers (a total density allocated by `allocation.targets`: pruning at initialisation).

Level l of a layer with N weights and fraction f keeps exactly `kept_count(N, (1 - f) ** l)` weights (the
one count rule of `count.py`: the removed count rounds half up), so each level removes f x remaining to
within one weight and the density after l levels is (1-f)^l to the nearest weight, with no drift. Global
scope applies the same rule to the pooled layers that share the global fraction. Without a level number the
count is `pruned_count(remaining, f)`. Ties in the score are broken at random (Zhou et al.), with the
generator given, so the same seed picks the same weights.
"""

from __future__ import annotations

import torch

from .allocation import layer_fractions, pools
from .count import round_half_up
from .mask import Mask
from .schedule import level_pruned
from .structure import lowest

__all__ = ["keep_top", "layer_fractions", "prune", "prune_count", "random_mask_like", "round_half_up"]

# The count of one pruning step (kept under its old name for callers of `prune.prune_count`).
prune_count = level_pruned


def prune(scores: dict[str, torch.Tensor], mask: Mask, fractions: dict[str, float], *,
          scope: str = "layerwise", global_fraction: float | None = None,
          level: int | None = None, generator: torch.Generator | None = None) -> Mask:
    """The next level's mask: from the weights `mask` keeps, remove the lowest-scoring ones.

    With scope="global", the layers whose fraction equals `global_fraction` are pooled and share one
    threshold; layers with their own fraction (the output layer, overrides) stay layer-wise. `level` is the
    number of the level being made (1 for the first pruning); it fixes the kept counts to (1-f)^level.
    """
    groups = pools(list(mask), fractions, scope, global_fraction)
    generator = generator or torch.Generator().manual_seed(0)
    new = {n: m.clone() for n, m in mask.tensors.items()}
    for names, fraction in groups:  # the pooled layers first, then the others in mask order
        alive = [mask[n].flatten().nonzero().squeeze(1) for n in names]
        flat = torch.cat([scores[n].flatten().float()[idx] for n, idx in zip(names, alive)])
        total = sum(mask[n].numel() for n in names)
        drop = lowest(flat, level_pruned(total, flat.numel(), fraction, level), generator)
        _remove(new, names, alive, drop)
    return Mask(new, order=list(mask))


def _remove(new: dict, names, alive: list, drop: torch.Tensor) -> None:
    """Clear in `new` the kept weights whose positions in the pool's concatenation are `drop`."""
    start = 0
    for n, idx in zip(names, alive):
        mine = drop[(drop >= start) & (drop < start + len(idx))] - start
        new[n].view(-1)[idx[mine]] = False
        start += len(idx)


def keep_top(scores: dict[str, torch.Tensor], mask: Mask, counts: list[tuple[tuple[str, ...], int]],
             generator: torch.Generator) -> Mask:
    """The mask that keeps, in each pool of layers, its `count` highest-scoring weights among those `mask`
    keeps (`allocation.targets` gives the pools and counts; a count above what is kept removes nothing).
    Ties broken at random by `generator`, as in `prune`; a NaN score counts as lowest."""
    new = {n: m.clone() for n, m in mask.tensors.items()}
    for names, count in counts:
        alive = [mask[n].flatten().nonzero().squeeze(1) for n in names]
        flat = torch.cat([scores[n].detach().flatten().float().cpu()[idx] for n, idx in zip(names, alive)])
        flat = torch.nan_to_num(flat, nan=-torch.inf)
        drop = lowest(flat, max(flat.numel() - int(count), 0), generator)
        _remove(new, names, alive, drop)
    return Mask(new, order=list(mask))


def random_mask_like(mask: Mask, generator: torch.Generator) -> Mask:
    """The random-pruning control: a random mask with the same number of kept weights in every layer as
    `mask` (whose counts came from the count rule), so the control and the ticket agree weight for weight."""
    out = {}
    for n, m in mask.tensors.items():
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=generator)[: int(m.sum())]] = True
        out[n] = flat.view_as(m)
    return Mask(out, order=list(mask))
