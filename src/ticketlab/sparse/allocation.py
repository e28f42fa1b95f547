"""Allocation: how a sparsity target is split among the prunable layers (scores play no part here).

Per-layer rates   `layer_fractions`: each layer its fraction pruned per level (hidden layers, the output
                  layer, explicit overrides); the IMP default.
Pools             `pools`: layer-wise scope gives every layer its own count; global scope pools the layers
                  that share the global fraction, so one threshold over their scores decides (the count is
                  the pool's, the split among its layers follows the scores).
Uniform           `uniform`: every layer at the target density.
ERK               `erk`: Erdos-Renyi-Kernel (Evci et al. 2020, "Rigging the Lottery"): the density of a
                  layer is proportional to sum(shape) / prod(shape), i.e. (n_in + n_out) / (n_in n_out)
                  for a linear layer and (c_in + c_out + k_h + k_w) / (c_in c_out k_h k_w) for a conv,
                  scaled so the total density is the target; a layer whose density would exceed 1 is kept
                  dense and the rest re-scaled.

A total density  `targets`: the kept count of each pool for a total density under one of `ALLOCATIONS`
                  (global, layerwise at IMP's rates, uniform, ERK); pruning at initialisation uses it.

`uniform`, `erk` and `per_layer` return per-layer kept counts, every one from the count rule
(`count.kept_count`), so the total is the target to within one weight per layer.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from ..errors import UserError
from .count import kept_count

SCOPES: tuple[str, ...] = ("global", "layerwise")

Shape = Sequence[int] | int


def _numel(shape: Shape) -> int:
    return int(shape) if isinstance(shape, int) else math.prod(shape)


def _check_density(density: float) -> None:
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density {density!r} is not in [0, 1]")


# ----------------------------------------------------------------------------------- per-layer rates
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


def pools(names: Sequence[str], fractions: Mapping[str, float], scope: str = "layerwise",
          global_fraction: float | None = None) -> list[tuple[tuple[str, ...], float]]:
    """The groups of layers that share one count, with their fraction, in the order they are pruned.

    Global scope: first the layers whose fraction equals `global_fraction` (pooled), then every other layer
    on its own (the output layer, overrides). Layer-wise: every layer on its own. Layers with fraction 0
    (or none) are not pruned and appear in no pool."""
    if scope not in SCOPES:
        raise UserError(f"unknown prune scope {scope!r}; valid: {', '.join(SCOPES)}")
    pooled = tuple(n for n in names if scope == "global" and fractions.get(n) == global_fraction and fractions[n] > 0)
    out = [(pooled, float(global_fraction))] if pooled else []
    out += [((n,), fractions[n]) for n in names if n not in pooled and fractions.get(n, 0.0) > 0]
    return out


# ------------------------------------------------------------------------------- density targets
def per_layer(shapes: Mapping[str, Shape], densities: Mapping[str, float]) -> dict[str, int]:
    """Kept counts for explicit per-layer densities."""
    return {n: kept_count(_numel(s), densities[n]) for n, s in shapes.items()}


def uniform(shapes: Mapping[str, Shape], density: float) -> dict[str, int]:
    """Kept counts with every layer at `density` (shapes or sizes by layer name)."""
    _check_density(density)
    return per_layer(shapes, {n: density for n in shapes})


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float, *, power: float = 1.0) -> dict[str, float]:
    """ERK's per-layer densities for a total `density` (see the module docstring); `power` scales the
    exponent of the raw ERK factor (1: Evci et al.'s ERK).

    Layers that would exceed density 1 are made dense one round at a time (those with the largest raw
    factor first) and the scale found again for the others, until none exceeds 1."""
    _check_density(density)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: (sum(s) / sizes[n]) ** power for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        sparse = [n for n in shapes if n not in dense]
        # kept weights the sparse layers must hold: the target minus what the dense layers already keep
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        divisor = sum(raw[n] * sizes[n] for n in sparse)
        scale = budget / divisor if divisor > 0 else 0.0
        over = [n for n in sparse if raw[n] * scale > 1.0]
        if not over:
            break
        top = max(raw[n] for n in over)
        dense.update(n for n in over if raw[n] == top)
    return {n: 1.0 if n in dense else min(max(raw[n] * scale, 0.0), 1.0) for n in shapes}


def erk(shapes: Mapping[str, Sequence[int]], density: float, *, power: float = 1.0) -> dict[str, int]:
    """Kept counts of the ERK allocation at total `density`."""
    return per_layer(shapes, erk_densities(shapes, density, power=power))


# ------------------------------------------------------------------------- a total density, allocated
ALLOCATIONS: tuple[str, ...] = ("global", "layerwise", "uniform", "erk")


def rate_densities(shapes: Mapping[str, Shape], fractions: Mapping[str, float], density: float) -> dict[str, float]:
    """Per-layer densities (1 - f_n)^t with one t for all layers, t chosen so that they keep `density` of
    the weights in all: IMP's per-layer rates (`layer_fractions`) carried to a total density. At a whole t
    they are the densities of IMP level t exactly; a layer with fraction 0 stays dense. UserError when the
    layers that are never pruned alone hold more than `density` of the weights."""
    _check_density(density)
    sizes = {n: _numel(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    target = density * total
    floor = sum(sizes[n] for n in sizes if fractions.get(n, 0.0) <= 0)
    if target < floor - 1e-9 * total:
        dense = ", ".join(n for n in sizes if fractions.get(n, 0.0) <= 0)
        raise UserError(f"density {density:g} is out of reach: {dense} (never pruned, fraction 0) hold {floor / max(total, 1):.4g} "
                        f"of the weights; give those layers a fraction, or a higher density")

    def kept(t: float) -> float:
        return sum(sizes[n] * (1.0 - fractions.get(n, 0.0)) ** t if fractions.get(n, 0.0) > 0 else sizes[n] for n in sizes)

    low, high = 0.0, 1.0
    while kept(high) > target and high < 1e6:
        low, high = high, 2 * high
    for _ in range(200):   # kept(t) falls with t: bisection to float precision
        mid = (low + high) / 2
        low, high = (mid, high) if kept(mid) > target else (low, mid)
        if high - low <= 1e-15 * max(high, 1.0):
            break
    t = high if abs(kept(high) - target) <= abs(kept(low) - target) else low
    return {n: (1.0 - fractions[n]) ** t if fractions.get(n, 0.0) > 0 else 1.0 for n in sizes}


def targets(allocation: str, shapes: Mapping[str, Shape], density: float,
            fractions: Mapping[str, float] | None = None) -> list[tuple[tuple[str, ...], int]]:
    """How many weights each pool of layers keeps at total `density`: [(layer names, kept count)].

    global     one pool of every layer: kept_count(all weights, density); the scores decide the split
    layerwise  each layer at IMP's per-layer rates carried to the total (`rate_densities`, needs `fractions`)
    uniform    each layer at `density`
    erk        each layer at its ERK density (`erk_densities`)

    Every count comes from the count rule, so a pool keeps its share to within one weight."""
    _check_density(density)
    if allocation == "global":
        return [(tuple(shapes), kept_count(sum(_numel(s) for s in shapes.values()), density))]
    if allocation == "uniform":
        counts = uniform(shapes, density)
    elif allocation == "erk":
        counts = erk({n: (s,) if isinstance(s, int) else tuple(s) for n, s in shapes.items()}, density)
    elif allocation == "layerwise":
        if fractions is None:
            raise ValueError("layerwise allocation needs the per-layer fractions")
        counts = per_layer(shapes, rate_densities(shapes, fractions, density))
    else:
        raise UserError(f"unknown allocation {allocation!r}; valid: {', '.join(ALLOCATIONS)}")
    return [((n,), c) for n, c in counts.items()]
