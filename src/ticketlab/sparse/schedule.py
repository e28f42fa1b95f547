"""The IMP level schedule (Frankle & Carbin 2019): how dense a layer is after each pruning level.

Level l of a layer (or of a pool of layers sharing one fraction) that loses a fraction f per level has
density (1 - f)^l; its kept count comes from the one count rule, `count.kept_count(N, (1 - f)^l)`, so the
density never drifts (see `count.py`). Level 0 is the dense network, level 1 the first pruning.
"""

from __future__ import annotations

from .count import kept_count, pruned_count


def level_density(fraction: float, level: int) -> float:
    """The target density of level `level` at `fraction` pruned per level: (1 - fraction) ** level."""
    if level < 0:
        raise ValueError(f"level {level} is negative")
    return (1.0 - fraction) ** level


def level_kept(total: int, fraction: float, level: int) -> int:
    """How many of `total` weights level `level` keeps."""
    return kept_count(total, level_density(fraction, level))


def most_levels(total: int, fraction: float, limit: int) -> int:
    """The most levels (at most `limit`) after which `total` weights pruned by `fraction` per level still
    keep at least one: the largest l <= limit with level_kept(total, fraction, l) >= 1 (a binary search:
    the kept count never grows with the level)."""
    if level_kept(total, fraction, limit) >= 1:
        return limit
    low, high = 0, limit   # level_kept(low) >= 1 (or total is 0), level_kept(high) == 0
    while high - low > 1:
        mid = (low + high) // 2
        if level_kept(total, fraction, mid) >= 1:
            low = mid
        else:
            high = mid
    return low


def level_pruned(total: int, remaining: int, fraction: float, level: int | None) -> int:
    """How many of the `remaining` (of `total`) weights the step to level `level` removes.

    Without a level number (a one-off pruning step, not part of a schedule) it is
    `pruned_count(remaining, fraction)`; with one, whatever takes `remaining` down to `level_kept`."""
    if level is None:
        return pruned_count(remaining, fraction)
    return max(remaining - level_kept(total, fraction, level), 0)
