"""Pruning at initialisation: scores of the untrained network (or of the network at a rewind point), a score
per weight, higher is kept, as the criteria of `criteria.py`; pools and counts from `allocation.targets`,
selection by `prune.keep_top`, one or several rounds (`prune_at_init`).

snip       |g * w|, g = dL/dw on the scoring batches (Lee et al. 2019, "SNIP": the connection sensitivity
           |dL/dc| of a mask c = 1, which is |w * dL/dw|; its normalisation does not change the order).
grasp      w * (H g), H the Hessian and g the gradient of the loss over the prunable weights (Wang et al. 2020,
           "GraSP"). The paper's score is S(-w) = -w * (H g), and it removes the weights with the highest S
           (Algorithm 1; the authors' code keeps `S <= threshold` of the top fraction), i.e. it keeps the lowest
           S; as a keep-score that is -S = w * (H g). H g is a double-backward Hessian-gradient product: g
           summed over the scoring batches (detached), then d(g . dL_b/dw)/dw summed over the batches. The
           logits are divided by a temperature (200, as in the authors' code) in both passes.
synflow    |dR/dw * w| of the network with every weight (and BatchNorm parameter and statistic) replaced by
           its absolute value, in eval mode, on a single all-ones input, R the sum of its outputs (Tanaka et
           al. 2020, "SynFlow"); data-free. Computed in float64. Iterative: 100 rounds by default.
magnitude  |w| at the scoring point (criterion `large_init`)
random     uniform random scores (criterion `random`)

Every round scores the network with the current mask applied; round i of N keeps the allocation of the
density D^(i/N) (the exponential schedule of SynFlow), so the last round keeps exactly the target. SNIP and
GraSP run the network in train mode (batch statistics, as the first training step does), on a copy: the
model given is never changed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .criteria import SCORERS as CRITERIA_SCORERS
from .mask import Mask
from .prune import keep_top

GRASP_TEMPERATURE = 200.0

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class Context:
    """What a scorer may use besides the network: `batches()` (called only by the methods that need data),
    the input shape (SynFlow's all-ones input) and a generator (random scores)."""

    input_shape: tuple[int, ...]
    batches: Batches = field(default=lambda: ())
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))


def _masked_copy(model: nn.Module, mask: Mask) -> nn.Module:
    net = copy.deepcopy(model)
    mask.apply_(net)
    return net


def _weights(net: nn.Module, mask: Mask) -> list[torch.Tensor]:
    params = dict(net.named_parameters())
    return [params[n] for n in mask]


def snip(model: nn.Module, mask: Mask, ctx: Context) -> dict[str, torch.Tensor]:
    """|g * w| with g the gradient of the loss summed over the scoring batches, at the masked weights."""
    net = _masked_copy(model, mask).train()
    weights = _weights(net, mask)
    grads = [torch.zeros_like(w) for w in weights]
    for x, y in ctx.batches():
        for acc, g in zip(grads, torch.autograd.grad(F.cross_entropy(net(x), y), weights)):
            acc += g
    return {n: (g * w).detach().abs().float().cpu() for n, g, w in zip(mask, grads, weights)}


def hessian_gradient(net: nn.Module, weights: list[torch.Tensor], batches: list, temperature: float) -> list[torch.Tensor]:
    """(H g) over `weights`: g = sum_b dL_b/dw (detached), H g = sum_b d(g . dL_b/dw)/dw, L_b the cross-entropy
    of batch b's logits divided by `temperature`."""
    g = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        for acc, gb in zip(g, torch.autograd.grad(F.cross_entropy(net(x) / temperature, y), weights)):
            acc += gb
    hg = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        gb = torch.autograd.grad(F.cross_entropy(net(x) / temperature, y), weights, create_graph=True)
        z = sum((a * b).sum() for a, b in zip(g, gb))
        for acc, h in zip(hg, torch.autograd.grad(z, weights)):
            acc += h
    return hg


def grasp(model: nn.Module, mask: Mask, ctx: Context, temperature: float = GRASP_TEMPERATURE) -> dict[str, torch.Tensor]:
    """w * (H g) = -S(-w) of Wang et al.: higher is kept (the paper removes the highest S)."""
    net = _masked_copy(model, mask).train()
    weights = _weights(net, mask)
    hg = hessian_gradient(net, weights, list(ctx.batches()), temperature)
    return {n: (w * h).detach().float().cpu() for n, w, h in zip(mask, weights, hg)}


def synflow(model: nn.Module, mask: Mask, ctx: Context) -> dict[str, torch.Tensor]:
    """|dR/dw * w| of the absolute-valued network (float64, eval mode) on one all-ones input; no data."""
    net = _masked_copy(model, mask).double().eval()
    with torch.no_grad():
        for t in net.state_dict().values():   # parameters and buffers (BatchNorm statistics), as the paper's code
            if t.is_floating_point():
                t.abs_()
    weights = _weights(net, mask)
    device = weights[0].device if weights else torch.device("cpu")
    x = torch.ones((1, *ctx.input_shape), dtype=torch.float64, device=device)
    flow = net(x).sum()
    grads = torch.autograd.grad(flow, weights)
    return {n: (g * w).detach().abs().float().cpu() for n, g, w in zip(mask, grads, weights)}


def _criterion(name: str):
    def scorer(model: nn.Module, mask: Mask, ctx: Context) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        out = {}
        for n in mask:
            w = (params[n].detach() * mask[n].to(params[n].device, params[n].dtype)).float().cpu()
            out[n] = CRITERIA_SCORERS[name](w, w, ctx.generator, None)
        return out
    return scorer


Scorer = Callable[[nn.Module, Mask, Context], dict[str, torch.Tensor]]

SCORERS: dict[str, Scorer] = {"snip": snip, "grasp": grasp, "synflow": synflow, "random": _criterion("random"),
                              "magnitude": _criterion("large_init")}
METHODS: tuple[str, ...] = tuple(SCORERS)
DATA_FREE: tuple[str, ...] = ("synflow", "random", "magnitude")
DEFAULT_ITERATIONS = {"synflow": 100}   # the others: one shot


def default_iterations(method: str) -> int:
    return DEFAULT_ITERATIONS.get(method, 1)


def prune_at_init(method: str, model: nn.Module, mask: Mask, density: float,
                  counts: Callable[[float], list[tuple[tuple[str, ...], int]]], ctx: Context,
                  iterations: int | None = None, generator: torch.Generator | None = None) -> Mask:
    """The mask of `method` at total `density`, from `mask` (all ones: from scratch), in `iterations` rounds
    (None: the method's default). `counts(d)` gives the pools and kept counts of density d
    (`allocation.targets`). The model is not changed."""
    rounds = default_iterations(method) if iterations is None else int(iterations)
    generator = generator or ctx.generator
    for i in range(1, rounds + 1):
        scores = SCORERS[method](model, mask, ctx)
        mask = keep_top(scores, mask, counts(density ** (i / rounds)), generator)
    return mask
