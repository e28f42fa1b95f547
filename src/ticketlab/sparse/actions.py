"""Mask actions of Zhou, Lan, Liu & Yosinski 2019, "Deconstructing Lottery Tickets" (Sections 3-4).

Given a mask M (True = kept, "mask-1") and the network's initial weights w_i (the rewind point) and trained
weights w_f, a *mask-1 action* says what the kept weights start from and a *mask-0 action* says what the
pruned weights hold during retraining. Pure functions over state dicts; every random draw comes from the
generator given, so the same seed gives the same weights.

Mask-1 actions, per prunable layer with init std sigma = std(w_i of the whole layer):

  rewind            w_i                                     (Frankle & Carbin's winning ticket)
  reinit            a permutation of the whole layer's w_i  (values of the init distribution, new places)
  reshuffle         w_i permuted among the kept positions only
  constant          +-sigma, random sign
  signed_reinit     |reinit| * sign(w_i)
  signed_reshuffle  |reshuffle| * sign(w_i)
  signed_constant   sigma * sign(w_i)

`rescale=True` multiplies the kept weights of a layer by numel / #kept (Zhou et al.'s "*_rescaling").

Mask-0 actions, the value of the pruned weights:

  zero                    0                                  (pruned; the default)
  freeze_init             w_i, frozen
  freeze_init_zero_mask   0 where |w_f| < |w_i| (the weight was shrinking), else w_i frozen

Non-prunable parameters (biases, BatchNorm) are always taken from w_i unchanged.
"""

from __future__ import annotations

import torch

from ..errors import unknown_name
from .mask import Mask

MASK_ONE_ACTIONS: tuple[str, ...] = ("rewind", "reinit", "reshuffle", "constant", "signed_reinit",
                                     "signed_reshuffle", "signed_constant")
MASK_ZERO_ACTIONS: tuple[str, ...] = ("zero", "freeze_init", "freeze_init_zero_mask")


def layer_sigma(w: torch.Tensor) -> torch.Tensor:
    """The layer's init standard deviation (population std of all its initial values)."""
    return w.float().std(correction=0).to(w.dtype)


def _permute(values: torch.Tensor, positions: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """`values` (flat copy) with the entries at `positions` permuted among themselves."""
    out = values.clone()
    out[positions] = values[positions[torch.randperm(len(positions), generator=g)]]
    return out


def _mask_one_layer(action: str, wi: torch.Tensor, kept: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flat, keep = wi.flatten(), kept.flatten()
    base = action.removeprefix("signed_")
    if base == "rewind":
        new = flat.clone()
    elif base == "reinit":
        new = _permute(flat, torch.arange(flat.numel()), g)
    elif base == "reshuffle":
        new = _permute(flat, keep.nonzero().squeeze(1), g)
    elif base == "constant":
        sigma = layer_sigma(flat)
        if action == "constant":
            sign = torch.where(torch.rand(flat.shape, generator=g) < 0.5, -1.0, 1.0).to(flat.dtype)
            return (sigma * sign).view_as(wi)
        new = torch.full_like(flat, float(sigma))
    else:
        raise unknown_name("mask-1 action", action, MASK_ONE_ACTIONS)
    if action.startswith("signed_"):
        new = new.abs() * torch.sign(flat)
    return new.view_as(wi)


def mask_one(action: str, initial: dict[str, torch.Tensor], mask: Mask, generator: torch.Generator, *,
             rescale: bool = False) -> dict[str, torch.Tensor]:
    """The start weights of a masked network: the mask-1 `action` on the kept weights of every masked layer,
    zero at pruned positions (a mask-0 action then sets those via `Mask(..., fill=mask_zero(...))`)."""
    if action not in MASK_ONE_ACTIONS:
        raise unknown_name("mask-1 action", action, MASK_ONE_ACTIONS)
    out = {k: v.detach().clone() for k, v in initial.items()}
    for name in mask:  # mask order: draws do not depend on dict order
        kept = mask[name].to(initial[name].device)
        w = _mask_one_layer(action, initial[name].detach(), kept, generator)
        if rescale:
            w = w * (kept.numel() / max(int(kept.sum()), 1))
        out[name] = w * kept.to(w.dtype)
    return out


def mask_zero(action: str, initial: dict[str, torch.Tensor], final: dict[str, torch.Tensor] | None,
              mask: Mask) -> dict[str, torch.Tensor] | None:
    """The fill values of pruned weights for `Mask(..., fill=...)`; None for `zero` (plain pruning).

    `final` (w_f, the weights the mask was computed from) is needed by freeze_init_zero_mask only."""
    if action not in MASK_ZERO_ACTIONS:
        raise unknown_name("mask-0 action", action, MASK_ZERO_ACTIONS)
    if action == "zero":
        return None
    if action == "freeze_init":
        return {n: initial[n].detach().clone() for n in mask}
    if final is None:
        raise ValueError("freeze_init_zero_mask needs the final weights w_f")
    return {n: torch.where(final[n].abs() < initial[n].abs(), torch.zeros_like(initial[n]), initial[n]).detach()
            for n in mask}


def with_actions(mask: Mask, initial: dict[str, torch.Tensor], final: dict[str, torch.Tensor] | None,
                 mask_one_action: str, mask_zero_action: str, generator: torch.Generator, *,
                 rescale: bool = False) -> tuple[Mask, dict[str, torch.Tensor]]:
    """(mask carrying the mask-0 fill, start weights): both actions at once, ready for `fit(mask=...)`."""
    fill = mask_zero(mask_zero_action, initial, final, mask)
    filled = Mask(mask.tensors, order=list(mask), fill=fill)
    return filled, filled.applied(mask_one(mask_one_action, initial, mask, generator, rescale=rescale))
