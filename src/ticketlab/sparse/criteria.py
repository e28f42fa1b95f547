"""Mask criteria of Zhou et al. 2019, "Deconstructing Lottery Tickets": a score per weight, higher is kept.

`w_i` is the weight at the rewind point (init), `w_f` after training. The `_same_sign` / `_diff_sign`
variants keep the base score where the sign of the weight stayed (flipped) and send the rest to -inf so
they are pruned first.
"""

from __future__ import annotations

from typing import Callable

import torch

Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def _rank(x: torch.Tensor) -> torch.Tensor:
    """Percentile rank in [0, 1] of each entry among the entries of its tensor."""
    flat = x.flatten()
    ranks = torch.empty_like(flat)
    ranks[flat.argsort(stable=True)] = torch.arange(flat.numel(), dtype=flat.dtype) / max(flat.numel() - 1, 1)
    return ranks.view_as(x)


_BASE: dict[str, Scorer] = {
    "large_final": lambda wi, wf, g: wf.abs(),
    "small_final": lambda wi, wf, g: -wf.abs(),
    "large_init": lambda wi, wf, g: wi.abs(),
    "small_init": lambda wi, wf, g: -wi.abs(),
    # Both magnitudes must clear one shared percentile: keeping the top-k of the smaller of the two
    # percentile ranks is that rule with the percentile found exactly instead of by binary search.
    "large_init_large_final": lambda wi, wf, g: torch.minimum(_rank(wi.abs()), _rank(wf.abs())),
    "small_init_small_final": lambda wi, wf, g: torch.minimum(_rank(-wi.abs()), _rank(-wf.abs())),
    "magnitude_increase": lambda wi, wf, g: wf.abs() - wi.abs(),
    "movement": lambda wi, wf, g: (wf - wi).abs(),
    "random": lambda wi, wf, g: torch.rand(wf.shape, generator=g),
}

_SIGNED = ("large_final", "small_final", "large_init", "small_init", "large_init_large_final",
           "small_init_small_final", "magnitude_increase", "movement")


def _with_sign(base: Scorer, same: bool) -> Scorer:
    def scorer(wi, wf, g):
        s = base(wi, wf, g)
        keep = (torch.sign(wi) == torch.sign(wf)) if same else (torch.sign(wi) != torch.sign(wf))
        return torch.where(keep, s, torch.full_like(s, -torch.inf))
    return scorer


SCORERS: dict[str, Scorer] = dict(_BASE)
for _name in _SIGNED:
    SCORERS[f"{_name}_same_sign"] = _with_sign(_BASE[_name], True)
    SCORERS[f"{_name}_diff_sign"] = _with_sign(_BASE[_name], False)

CRITERIA: tuple[str, ...] = tuple(SCORERS)


def score(criterion: str, initial: dict[str, torch.Tensor], final: dict[str, torch.Tensor],
          names, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Scores for the named layers, computed in float32 on the CPU."""
    f = SCORERS[criterion]
    return {n: f(initial[n].detach().float().cpu(), final[n].detach().float().cpu(), generator) for n in names}
