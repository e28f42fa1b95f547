"""Mask criteria of Zhou et al. 2019, "Deconstructing Lottery Tickets": a score per weight, higher is kept.

`w_i` is the weight at the rewind point (init), `w_f` after training. The `_same_sign` / `_diff_sign`
variants keep the base score where the sign of the weight stayed (flipped) and send the rest to -inf so
they are pruned first.
"""

from __future__ import annotations

from typing import Callable

import torch

# (w_i, w_f, generator, kept) -> scores; `kept` is the bool mask of the weights still in the network, or None.
Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Generator, "torch.Tensor | None"], torch.Tensor]


def _rank(x: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """Percentile rank in [0, 1] of each entry among the entries of its tensor, or, given `kept`, among the
    kept entries only (pruned entries get -inf: they are not candidates)."""
    if kept is not None:
        out = torch.full_like(x, -torch.inf)
        out[kept] = _rank(x[kept])
        return out
    flat = x.flatten()
    ranks = torch.empty_like(flat)
    ranks[flat.argsort(stable=True)] = torch.arange(flat.numel(), dtype=flat.dtype) / max(flat.numel() - 1, 1)
    return ranks.view_as(x)


_BASE: dict[str, Scorer] = {
    "large_final": lambda wi, wf, g, m: wf.abs(),
    "small_final": lambda wi, wf, g, m: -wf.abs(),
    "large_init": lambda wi, wf, g, m: wi.abs(),
    "small_init": lambda wi, wf, g, m: -wi.abs(),
    # Both magnitudes must clear one shared percentile: keeping the top-k of the smaller of the two
    # percentile ranks is that rule with the percentile found exactly instead of by binary search. The
    # ranks are taken among the weights the current mask keeps (Zhou et al.'s percentile is over the
    # surviving weights of the layer), so already-pruned zeros do not shift them.
    "large_init_large_final": lambda wi, wf, g, m: torch.minimum(_rank(wi.abs(), m), _rank(wf.abs(), m)),
    "small_init_small_final": lambda wi, wf, g, m: torch.minimum(_rank(-wi.abs(), m), _rank(-wf.abs(), m)),
    "magnitude_increase": lambda wi, wf, g, m: wf.abs() - wi.abs(),
    "movement": lambda wi, wf, g, m: (wf - wi).abs(),
    "random": lambda wi, wf, g, m: torch.rand(wf.shape, generator=g),
}

_SIGNED = ("large_final", "small_final", "large_init", "small_init", "large_init_large_final",
           "small_init_small_final", "magnitude_increase", "movement")


def _with_sign(base: Scorer, same: bool) -> Scorer:
    def scorer(wi, wf, g, m):
        s = base(wi, wf, g, m)
        keep = (torch.sign(wi) == torch.sign(wf)) if same else (torch.sign(wi) != torch.sign(wf))
        return torch.where(keep, s, torch.full_like(s, -torch.inf))
    return scorer


SCORERS: dict[str, Scorer] = dict(_BASE)
for _name in _SIGNED:
    SCORERS[f"{_name}_same_sign"] = _with_sign(_BASE[_name], True)
    SCORERS[f"{_name}_diff_sign"] = _with_sign(_BASE[_name], False)

CRITERIA: tuple[str, ...] = tuple(SCORERS)


def score(criterion: str, initial: dict[str, torch.Tensor], final: dict[str, torch.Tensor],
          names, generator: torch.Generator, mask=None) -> dict[str, torch.Tensor]:
    """Scores for the named layers, computed in float32 on the CPU. `mask` (a `Mask` or a dict of bool
    tensors; optional) is the mask being pruned further: percentile-rank criteria rank among its kept
    weights. Without it, ranks are over whole layers."""
    f = SCORERS[criterion]
    kept = (lambda n: None) if mask is None else (lambda n: mask[n].detach().cpu().to(torch.bool))
    return {n: f(initial[n].detach().float().cpu(), final[n].detach().float().cpu(), generator, kept(n)) for n in names}
