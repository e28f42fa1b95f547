"""Magnitude-style pruning allocation: which weights a level removes, given scores.

Level l of a layer with N weights and fraction f keeps exactly `round(N * (1 - f) ** l)` weights (round
half up), so each level removes `round(f * remaining)` to within one weight and the density after l
levels is (1-f)^l to the nearest weight, with no drift. (Rounding `f * remaining` afresh at every level
drifts by up to 0.5/f weights over many levels; OpenLTH's threshold removes one weight too many per
level.) Global scope applies the same rule to the pooled layers that share the global fraction. Without
a level number the count is `round(f * remaining)`. Ties in the score are broken at random (Zhou et
al.), with the generator given, so the same seed picks the same weights.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError
from .mask import Mask


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def layer_fractions(names: list[str], output: str, prune_fraction: float, output_prune_fraction: float,
                    overrides: dict[str, float] | tuple = ()) -> dict[str, float]:
    """The fraction each prunable layer loses per level: hidden layers `prune_fraction`, the output layer
    its own, and explicit per-layer overrides on top (unknown layer names are refused)."""
    fractions = {n: prune_fraction for n in names}
    if output in fractions:
        fractions[output] = output_prune_fraction
    for name, frac in dict(overrides).items():
        if name not in fractions:
            raise UserError(f"--layer-prune-fractions: unknown layer {name!r}; prunable layers: {', '.join(names)}")
        fractions[name] = frac
    return fractions


def prune_count(total: int, remaining: int, fraction: float, level: int | None) -> int:
    """How many of `remaining` (of `total`) weights a level removes; see the module docstring."""
    if level is None:
        return round_half_up(fraction * remaining)
    keep = round_half_up(total * (1.0 - fraction) ** level)
    return max(remaining - keep, 0)


def _lowest(scores: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Indices (into the flat `scores`) of the `count` lowest scores, ties broken at random."""
    if count <= 0:
        return torch.empty(0, dtype=torch.long)
    shuffle = torch.randperm(scores.numel(), generator=generator)
    order = scores[shuffle].argsort(stable=True)
    return shuffle[order[:count]]


def prune(scores: dict[str, torch.Tensor], mask: Mask, fractions: dict[str, float], *,
          scope: str = "layerwise", global_fraction: float | None = None,
          level: int | None = None, generator: torch.Generator | None = None) -> Mask:
    """The next level's mask: from the weights `mask` keeps, remove the lowest-scoring ones.

    With scope="global", the layers whose fraction equals `global_fraction` are pooled and share one
    threshold; layers with their own fraction (the output layer, overrides) stay layer-wise. `level` is the
    number of the level being made (1 for the first pruning); it fixes the kept counts to (1-f)^level.
    """
    if scope not in ("layerwise", "global"):
        raise UserError(f"unknown prune scope {scope!r}; valid: global, layerwise")
    generator = generator or torch.Generator().manual_seed(0)
    new = {n: m.clone() for n, m in mask.tensors.items()}
    pooled = [n for n in mask if scope == "global" and fractions.get(n) == global_fraction and fractions[n] > 0]
    if pooled:
        alive = [mask[n].flatten().nonzero().squeeze(1) for n in pooled]
        flat = torch.cat([scores[n].flatten().float()[idx] for n, idx in zip(pooled, alive)])
        total = sum(mask[n].numel() for n in pooled)
        drop = _lowest(flat, prune_count(total, flat.numel(), global_fraction, level), generator)
        sizes = torch.tensor([len(a) for a in alive])
        owner = torch.repeat_interleave(torch.arange(len(pooled)), sizes)
        offsets = torch.cumsum(sizes, 0) - sizes
        for i, n in enumerate(pooled):
            local = drop[owner[drop] == i] - offsets[i]
            new[n].view(-1)[alive[i][local]] = False
    for n in mask:
        frac = fractions.get(n, 0.0)
        if n in pooled or frac <= 0:
            continue
        alive = mask[n].flatten().nonzero().squeeze(1)
        drop = _lowest(scores[n].flatten().float()[alive], prune_count(mask[n].numel(), alive.numel(), frac, level), generator)
        new[n].view(-1)[alive[drop]] = False
    return Mask(new, order=list(mask))


def random_mask_like(mask: Mask, generator: torch.Generator) -> Mask:
    """A random mask with the same number of kept weights in every layer (the random-pruning control)."""
    out = {}
    for n, m in mask.tensors.items():
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=generator)[: int(m.sum())]] = True
        out[n] = flat.view_as(m)
    return Mask(out, order=list(mask))
