"""Callbacks that change a model's mask while it trains: gradual magnitude pruning (`GradualMagnitude`,
Zhu & Gupta 2017) and dynamic sparse training (`DynamicSparse`: SET, Mocanu et al. 2018; RigL, Evci et
al. 2020). The schedules and the per-layer updates are `sparse/dynamic.py`.

Both share the model's `Mask` with the `ApplyMask` callback that comes first in the list (`assemble`), and
change it in place in `after_step`, after the optimizer step and the re-masking: prune or drop and grow,
then re-apply. RigL's dense gradient is the one of the step just taken (the batch of that iteration, at
the weights before the step), as in Evci et al.'s code: masks here zero the weights after each step rather
than the gradients, so the gradient of every weight, kept or not, is already there and costs nothing extra.
Regrown weights are set to exactly zero and their optimizer state (momentum, Adam's moments) is reset,
through the stepper the loop hands to `attach`.

State for exact resumption (`state_dict`): the current mask, and SET's generator state.

Not stackable: the stacked stepper keeps its own stacked masks and optimizer state, which these callbacks
do not change, so their models train alone (the experiment also sets `stack_limit = 1`).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import seeding
from ..names import SPARSE_ALLOCATIONS as ALLOCATIONS  # noqa: F401 (re-exported)
from ..sparse import Mask
from ..sparse.allocation import erk, uniform
from ..sparse.count import kept_count
from ..sparse.dynamic import cosine_drop_fraction, drop_and_grow, gmp_sparsity, gmp_steps
from ..sparse.structure import lowest
from .callbacks import Callback



def kept_counts(shapes: dict[str, tuple], density: float, allocation: str) -> dict[str, int]:
    """Per-layer kept counts at total `density` (uniform or ERK; the count rule)."""
    if allocation == "erk":
        return erk(shapes, density)
    return uniform(shapes, density)


def random_mask(shapes: dict[str, tuple], density: float, allocation: str, generator: torch.Generator) -> Mask:
    """A random mask with the allocation's kept count in every layer (layers in the order given)."""
    counts = kept_counts(shapes, density, allocation)
    out = {}
    for n, shape in shapes.items():
        numel = int(torch.Size(shape).numel())
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[torch.randperm(numel, generator=generator)[: counts[n]]] = True
        out[n] = flat.view(shape)
    return Mask(out, order=list(shapes))


class _MaskChanging(Callback):
    stackable = False

    def __init__(self, mask: Mask):
        self.mask = mask
        self.params: dict[str, torch.Tensor] = {}
        self.optimizer = None

    def attach(self, stepper, index: int) -> None:
        self.optimizer = getattr(stepper, "opt", None)

    def on_start(self, step: int, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        self.params = {n: params[n] for n in self.mask}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"mask.{n}": m.clone() for n, m in self.mask.tensors.items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        for n in self.mask:
            self.mask.update_(n, tensors[f"mask.{n}"])


class GradualMagnitude(_MaskChanging):
    """GMP: at every step of `gmp_steps(start, end, every)` the kept weights of smallest magnitude are pruned
    so that sparsity follows `gmp_sparsity` to `1 - density`: every layer at the allocation's count
    (uniform: each layer at the target; erk: ERK's per-layer densities at the target) or, `global`, one
    magnitude threshold over all layers (the count rule on their total). Ties: at random, from a generator
    that depends only on (seed, step)."""

    def __init__(self, mask: Mask, density: float, *, start: int, end: int, every: int,
                 allocation: str = "uniform", seed: int = 0):
        super().__init__(mask)
        self.density, self.start, self.end, self.allocation, self.seed = density, start, end, allocation, seed
        self.steps = set(gmp_steps(start, end, every))

    def target(self, step: int) -> float:
        """The schedule's density (1 - s_t) at `step`."""
        return 1.0 - gmp_sparsity(step, 1.0 - self.density, self.start, self.end)

    def after_step(self, step: int, model: nn.Module) -> None:
        if step in self.steps:
            self.prune(step)
            self.mask.apply_(model)

    def prune(self, step: int) -> None:
        density = self.target(step)
        shapes = {n: tuple(m.shape) for n, m in self.mask.tensors.items()}
        g = seeding.generator("gmp-ties", self.seed, step)
        if self.allocation == "global":
            groups = [(list(shapes), kept_count(sum(m.numel() for m in self.mask.tensors.values()), density))]
        else:
            groups = [([n], k) for n, k in kept_counts(shapes, density, self.allocation).items()]
        for names, keep in groups:
            alive = [self.mask[n].flatten().nonzero().squeeze(1) for n in names]
            scores = torch.cat([self.params[n].detach().flatten().cpu()[idx].abs().float() for n, idx in zip(names, alive)])
            drop = lowest(scores, max(scores.numel() - keep, 0), g)
            at = 0
            for n, idx in zip(names, alive):
                mine = drop[(drop >= at) & (drop < at + len(idx))] - at
                if len(mine):
                    flat = self.mask[n].flatten().clone()
                    flat[idx[mine]] = False
                    self.mask.update_(n, flat)
                at += len(idx)


class DynamicSparse(_MaskChanging):
    """SET (`growth="set"`) or RigL (`growth="rigl"`): every `every` steps before `end`, each layer drops the
    cosine-decayed fraction of its active weights of smallest magnitude and grows as many (`drop_and_grow`);
    grown weights are zeroed and their optimizer state reset. SET's draws come from one generator seeded by
    (seed), whose state is checkpointed."""

    def __init__(self, mask: Mask, growth: str, *, every: int, end: int, alpha: float = 0.3, seed: int = 0):
        super().__init__(mask)
        self.growth, self.every, self.end, self.alpha = growth, max(int(every), 1), end, alpha
        self.generator = seeding.generator("set-growth", seed)
        self.updates: list[dict] = []   # what each update did in this process (tests, diagnostics)

    def fraction(self, step: int) -> float:
        return cosine_drop_fraction(step, self.alpha, self.end)

    def due(self, step: int) -> bool:
        return 0 < step < self.end and step % self.every == 0

    def after_step(self, step: int, model: nn.Module) -> None:
        if self.due(step):
            self.update(step)
            self.mask.apply_(model)

    def update(self, step: int) -> None:
        fraction = self.fraction(step)
        grown_total = 0
        for n in self.mask:
            p = self.params[n]
            new, grown = drop_and_grow(p, self.mask[n], fraction, self.growth, grad=p.grad, generator=self.generator)
            if grown.numel():
                with torch.no_grad():
                    p.view(-1)[grown] = 0.0
                self._reset_state(p, grown)
            self.mask.update_(n, new)
            grown_total += int(grown.numel())
        self.updates.append({"step": step, "fraction": fraction, "grown": grown_total})

    def _reset_state(self, p: torch.Tensor, grown: torch.Tensor) -> None:
        """Zero the optimizer's per-weight state (momentum buffer, Adam's moments) at the grown positions."""
        state = self.optimizer.state.get(p) if self.optimizer is not None else None
        for v in (state or {}).values():
            if torch.is_tensor(v) and v.shape == p.shape:
                v.view(-1)[grown] = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        self.generator.set_state(tensors["generator"])
