"""Sparsity types: what one mask entry stands for, and how entries are picked once the count is known.

unstructured  one entry per weight of the prunable layers (nn.Linear / Conv weights). IMP (`prune.py`)
              removes the lowest-scoring weights with ties broken at random by a seeded generator
              (`lowest`); early-bird without BatchNorm cuts one global magnitude mask (`weight_scores`).
channels      one entry per BatchNorm channel, scored by |gamma| (Network Slimming, Liu et al. 2017;
              Early-Bird, You et al. 2020): `channel_scores`; `instruments/channel_prune.py` turns such a
              mask into a smaller dense network.

`global_mask` cuts a flat mask of either type from flat scores with one threshold: the
`count.pruned_count(n, fraction)` lowest go (ties by position, so exactly that many go).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import models
from ..models.resnet import Residual
from .count import pruned_count


def lowest(scores: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Indices (into the flat `scores`) of the `count` lowest scores, ties broken at random by `generator`
    (no draw at all when `count` is 0, so the generator's state then stays as it was)."""
    if count <= 0:
        return torch.empty(0, dtype=torch.long)
    shuffle = torch.randperm(scores.numel(), generator=generator)
    order = scores[shuffle].argsort(stable=True)
    return shuffle[order[:count]]


def global_mask(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """A flat bool mask (True = kept) over `values` that removes the `pruned_count(n, fraction)` smallest,
    ties broken by position (the earlier goes first)."""
    n = values.numel()
    pruned = pruned_count(n, fraction)
    keep = torch.ones(n, dtype=torch.bool)
    if pruned:
        order = torch.sort(values.detach().flatten().double(), stable=True).indices
        keep[order[:pruned]] = False
    return keep


# ------------------------------------------------------------------------------------------- channels
def bn_layers(model: nn.Module) -> list[str]:
    """Module names of the affine BatchNorm layers whose channels can be pruned, in module order: every one,
    except in a ResNet, where only each block's inner one (`bn1`, between its two convolutions) is: the
    others feed residual sums, which tie a stage's channels together."""
    blocks = [n for n, m in model.named_modules() if isinstance(m, Residual)]
    if blocks:
        return [f"{n}.bn1" for n in blocks]
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]


def channel_scores(model: nn.Module) -> torch.Tensor:
    """|gamma| of every BatchNorm channel (layers in module order), one flat float vector on the CPU."""
    modules = dict(model.named_modules())
    return torch.cat([modules[n].weight.detach().abs().reshape(-1).cpu() for n in bn_layers(model)])


def channel_mask(model: nn.Module, fraction: float) -> torch.Tensor:
    """The flat channel mask over `bn_layers(model)` that prunes `fraction` of the channels by |gamma|."""
    return global_mask(channel_scores(model), fraction)


# ---------------------------------------------------------------------------------------- unstructured
def weight_scores(model: nn.Module) -> torch.Tensor:
    """|w| of every prunable weight (layers in `models.prunable_names` order), one flat float vector."""
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().abs().reshape(-1).cpu() for n in models.prunable_names(model)])
