"""Learned supermasks over frozen random weights, for any registry model via `torch.func.functional_call`.

bernoulli   Zhou et al. 2019, Section 5: a real score m per weight, mask ~ Bernoulli(sigmoid(m)) with the
            straight-through estimator  mask = b + sigmoid(m) - stopgrad(sigmoid(m)),  b ~ Bernoulli(sigmoid(m));
            the mask is sampled at test time too. Dynamic weight rescaling (DWR) multiplies each layer's
            weights by numel / sum(mask).
edge-popup  Ramanujan et al. 2020: a score per weight, mask = top-k |score| of each layer (k =
            `count.kept_count(numel, kept)`, the one count rule), straight-through (the gradient of the mask
            passes to the score unchanged).

Only the prunable weights (nn.Linear / Conv weights) are masked; every parameter of the network is frozen,
only the scores train. The masked weights are never written into the model: the forward pass is
`functional_call(net, {name: w * mask(score) * scale})`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from .. import seeding
from ..errors import unknown_name
from .count import kept_count

METHODS: tuple[str, ...] = ("bernoulli", "edge-popup")


class BernoulliSTE(torch.autograd.Function):
    """b ~ Bernoulli(p) forward, identity backward: together with `p` this is b + p - stopgrad(p)."""

    @staticmethod
    def forward(ctx, p, generator):
        return torch.bernoulli(p, generator=generator)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def bernoulli_mask(scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Zhou et al.'s sampled mask with the straight-through estimator: value b, gradient d sigmoid(m)/dm."""
    return BernoulliSTE.apply(torch.sigmoid(scores), generator)


class TopKSTE(torch.autograd.Function):
    """The 0/1 mask of the k largest (non-negative) scores forward; the gradient passes through unchanged."""

    @staticmethod
    def forward(ctx, scores, k):
        flat = scores.detach().flatten()
        out = torch.zeros_like(flat)
        if k > 0:
            out[flat.topk(k, sorted=False).indices] = 1.0
        return out.view_as(scores)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def top_k_mask(scores: torch.Tensor, kept: float) -> torch.Tensor:
    """Edge-popup's mask: exactly `kept_count(numel, kept)` ones per layer, at the largest |score|."""
    return TopKSTE.apply(scores.abs(), kept_count(scores.numel(), kept))


keep_count = kept_count  # the old name of edge-popup's k


def _key(name: str) -> str:
    return name.replace(".", "__")


class Supermask(nn.Module):
    """A frozen network `net` whose prunable weights `names` are masked by learned scores.

    `mode` picks the mask of the forward pass: "train" (bernoulli: sampled with `generator`; edge-popup: top-k),
    "sample" (bernoulli: one mask drawn by `fix_sample`, fixed until cleared), "expected" (bernoulli: the
    mask's expectation sigmoid(m)). Edge-popup's mask is deterministic in every mode.
    """

    def __init__(self, net: nn.Module, names: list[str], method: str, *, kept: float = 0.5,
                 rescale: bool = True, seed: int = 0):
        super().__init__()
        if method not in METHODS:
            raise unknown_name("supermask method", method, METHODS)
        self.net, self.names, self.method, self.kept, self.rescale = net, list(names), method, kept, rescale
        for p in net.parameters():
            p.requires_grad_(False)
        params = dict(net.named_parameters())
        g = seeding.generator("supermask-scores", seed)
        self.scores = nn.ParameterDict()
        for n in self.names:
            w = params[n]
            if method == "bernoulli":
                s = torch.zeros(w.shape)  # sigmoid(0) = 0.5: every weight starts kept with probability 1/2
            else:
                s = nn.init.kaiming_uniform_(torch.empty(w.shape), a=math.sqrt(5), generator=g)
            self.scores[_key(n)] = nn.Parameter(s.to(w.device))
        self.mode = "train"
        self.generator: torch.Generator | None = None
        self._fixed: dict[str, torch.Tensor] | None = None

    def masks(self) -> dict[str, torch.Tensor]:
        """The current float masks by weight name (differentiable in "train" mode)."""
        if self._fixed is not None:
            return self._fixed
        out = {}
        for n in self.names:
            s = self.scores[_key(n)]
            if self.method == "edge-popup":
                out[n] = top_k_mask(s, self.kept)
            elif self.mode == "expected":
                out[n] = torch.sigmoid(s)
            else:
                out[n] = bernoulli_mask(s, self.generator)
        return out

    @torch.no_grad()
    def fix_sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw one test-time mask (bernoulli) and use it until `clear_sample`."""
        self._fixed = None
        previous, self.generator, self.mode = self.generator, generator, "sample"
        self._fixed = {n: m.detach() for n, m in self.masks().items()}
        self.generator = previous
        return self._fixed

    def clear_sample(self) -> None:
        self._fixed, self.mode = None, "train"

    def masked_weights(self, masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        masks = self.masks() if masks is None else masks
        params = dict(self.net.named_parameters())
        out = {}
        for n in self.names:
            m = masks[n]
            w = params[n] * m
            if self.rescale and self.method == "bernoulli":
                # dynamic weight rescaling (Zhou et al.): the layer's output scale stays that of the full layer
                w = w * (m.numel() / m.detach().sum().clamp_min(1.0))
            out[n] = w
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, self.masked_weights(), (x,))

    @torch.no_grad()
    def density(self, masks: dict[str, torch.Tensor] | None = None) -> float:
        """Fraction of the masked weights kept (for the expectation: the mean keep probability)."""
        masks = self.masks() if masks is None else masks
        kept = sum(float(m.sum()) for m in masks.values())
        return kept / max(sum(m.numel() for m in masks.values()), 1)


def signed_kaiming_constant(net: nn.Module, names: list[str]) -> None:
    """Ramanujan et al.'s weights: every masked weight becomes sign(w) * sqrt(2 / fan_in), in place."""
    params = dict(net.named_parameters())
    with torch.no_grad():
        for n in names:
            w = params[n]
            fan_in = w[0].numel()
            w.copy_(torch.sign(w) * math.sqrt(2.0 / fan_in))


def signed_constant(net: nn.Module, names: list[str]) -> None:
    """Zhou et al.'s signed constant: sign(w) * std of the layer's initial weights, in place."""
    from .actions import layer_sigma

    params = dict(net.named_parameters())
    with torch.no_grad():
        for n in names:
            w = params[n]
            w.copy_(torch.sign(w) * layer_sigma(w))
