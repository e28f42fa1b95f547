"""THE count rule: how many of n weights (or channels) a fraction removes and a density keeps.

Every place in ticketlab that decides how many weights or channels to keep or remove calls this module:
IMP pruning (layer-wise and global, every level: `schedule.py`), the allocations (`allocation.py`:
uniform, ERK, per-layer rates), edge-popup's top-k (`supermask.py`), early-bird's channel and magnitude
masks (`structure.py`, `instruments/mask_distance.py`). There is no second rounding rule anywhere.

    pruned_count(n, f) = floor(n f + 1/2)          (round half up: a tie removes the weight)
    kept_count(n, d)   = n - pruned_count(n, 1 - d)

So the two always add up to n, and a tie (n f exactly half-way, e.g. 0.25 of 10 channels, 0.5 of 5
weights) is decided the same way whether the caller speaks of the fraction removed or the density kept:
0.25 of 10 removes 3 and keeps 7; 0.5 of 5 removes 3 and keeps 2. (Python's `round` rounds half to even
and `floor(n d + 1/2)` of the *kept* count rounds the other way at a tie, which is how early-bird and
pruning once disagreed by a channel.)

Why counts from a target density rather than `round(f * remaining)` at every step: IMP level l of a layer
with N weights keeps `kept_count(N, (1 - f) ** l)`, so the density after l levels is (1-f)^l to the nearest
weight, exactly, with no drift; each level still removes f x remaining to within one weight. Rounding
`f * remaining` afresh at every level drifts by up to 0.5/f weights over many levels (and OpenLTH's
threshold removes one weight too many per level).

A product n f that lies within `TIE_TOLERANCE` of a half counts as the half: float noise must not decide a
tie (1 - 0.9 is 0.09999999999999998, and 5 x that falls just short of 0.5). The tolerance covers the float
error of these products for n up to ~1e8 weights; values that are really that close to a half but not
one do not arise from fractions written with a few digits.
"""

from __future__ import annotations

import math

TIE_TOLERANCE = 1e-6


def round_half_up(x: float) -> int:
    """floor(x + 1/2), with `x` within TIE_TOLERANCE of a half counted as the half."""
    return int(math.floor(x + 0.5 + TIE_TOLERANCE))


def _check(n: int, value: float, what: str) -> None:
    if n < 0:
        raise ValueError(f"negative count n={n}")
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"{what} {value!r} is not in [0, 1]")


def pruned_count(n: int, fraction: float) -> int:
    """How many of `n` weights a `fraction` in [0, 1] removes: round half up of n x fraction."""
    _check(n, fraction, "fraction")
    return min(max(round_half_up(n * fraction), 0), n)


def kept_count(n: int, density: float) -> int:
    """How many of `n` weights a `density` in [0, 1] keeps: n - pruned_count(n, 1 - density).

    (The removed share is computed as n - n x density rather than n x (1 - density): one rounding less.)"""
    _check(n, density, "density")
    return n - min(max(round_half_up(n - n * density), 0), n)
