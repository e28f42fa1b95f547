"""Forgetting operations (Zhou, Vani, Larochelle & Courville 2022, "Fortuitous Forgetting in Connectionist
Networks"; Taha, Shrivastava & Davis 2021, "Knowledge Evolution in Neural Networks"): one vocabulary that any
experiment can use (`ticketlab forget` relearns after them; its targeted probe applies them to copies).

An operation is a keep-mask per touched parameter (True = the entry keeps its value) plus a redraw of the
other entries. Parameters it does not touch are left bit for bit as they were.

  llf     later-layer forgetting: every parameter from the layer `reset_from` onward, in the model's
          registration order (`named_parameters`, the order of the forward pass for the models here), is
          redrawn; earlier layers are kept. Default layer: the output layer.
  ke      knowledge evolution: each Linear/Conv layer keeps a fixed "fit hypothesis" and the rest is redrawn.
          kels: the first ceil(r out) output units x the first ceil(r in) inputs (the first layer keeps all
          its inputs, the output layer all its outputs); wels: a Bernoulli(r) mask per weight, drawn once per
          seed (the same every generation). A bias entry is kept with its output unit (kels: the first
          ceil(r out); wels: every bias is kept, a weight mask says nothing about units).
  random  each Linear/Conv weight matrix keeps a random kept_count(n, keep) of its entries (the count rule of
          `sparse/count.py`), the rest is redrawn; biases are kept.
  imp     each Linear/Conv weight matrix keeps its top kept_count(n, keep) entries by magnitude, rewound to
          their values in `init_state`; the rest is zeroed; biases are rewound to `init_state`.

The redraw (`redraw`): `init` draws the entries afresh with the model's own initialisation (`models.initialize`,
weights by the spec's init, biases 0, BatchNorm 1 and 0) from a seed of (seed, generation), or of the seed
alone with `fix_seed` (every generation redraws the same values); `zero` sets them to zero. imp always zeroes.
`keep` is the kept fraction of random and imp (None: 0.5 for random, 0.3 for imp, the paper's targeted
forgetting); the output layer forgets `output_rate_factor` times their rate (keep 0.5 and factor 0.5: the output
layer keeps 0.75). KE keeps its own output-layer rule and llf has no rate, so the factor does not apply to them.

BatchNorm (affine parameters and running statistics) is kept by every operation unless `reset_bn`: then the
BatchNorm layers the operation covers (llf: from its layer onward; the others: all) get weight 1, bias 0 and
fresh running statistics.

    masks = forget_(model, Forgetting("random", keep=0.5), init_state=w0, seed=0, generation=3)

`freeze_mask(model, masks, "kept" | "reset")` gives the `Mask` (with fill values) that holds one part still
while the other relearns (`--freeze`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import seeding
from ..errors import UserError
from ..names import FORGET_METHODS as METHODS, FREEZE, KE_SPLIT_MODES as SPLIT_MODES, REDRAWS
from .count import kept_count
from .mask import Mask

DEFAULT_KEEP = {"random": 0.5, "imp": 0.3}

__all__ = ["METHODS", "SPLIT_MODES", "REDRAWS", "FREEZE", "DEFAULT_KEEP", "Forgetting", "forget_", "keep_masks",
           "freeze_mask", "layer_names", "check"]


@dataclass(frozen=True)
class Forgetting:
    """One forgetting operation and its settings (see the module docstring)."""

    method: str
    reset_from: str | None = None      # llf: the first layer forgotten (None: the output layer)
    redraw: str = "init"               # init | zero
    reset_bn: bool = False
    split_rate: float = 0.8            # ke
    split_mode: str = "kels"           # ke: kels | wels
    keep: float | None = None          # random, imp (None: DEFAULT_KEEP)
    output_rate_factor: float = 0.5    # random, imp
    fix_seed: bool = False
    init: str = "kaiming_normal"       # the model's initialisation, for the redraw

    @property
    def kept_fraction(self) -> float:
        return DEFAULT_KEEP.get(self.method, 1.0) if self.keep is None else self.keep

    def layer_keep(self, output: bool) -> float:
        """The kept fraction of a layer under random / imp (the output layer forgets at the factor's rate)."""
        keep = self.kept_fraction
        return 1 - (1 - keep) * self.output_rate_factor if output else keep


# ------------------------------------------------------------------------------------------- the layers
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_NORMS = (nn.modules.batchnorm._BatchNorm,)


def _weighted(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _WEIGHTED)]


def _join(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def layer_names(model: nn.Module) -> list[str]:
    """The names `reset_from` accepts: every module that holds parameters (itself or below), in registration
    order (e.g. `hidden`, `hidden.0`, `hidden.1`, `fc`; `blocks.8`, `blocks.8.conv1`, ...)."""
    return [n for n, m in model.named_modules() if n and any(True for _ in m.parameters())]


def _output_module(model: nn.Module) -> str:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__} has no nn.Linear output layer")
    return linears[-1]


def check(model: nn.Module, f: Forgetting) -> None:
    """Refuse unknown methods, split modes, redraws and layer names (one line listing the valid ones)."""
    if f.method not in METHODS:
        raise UserError(f"unknown forgetting method {f.method!r}; valid: {', '.join(METHODS)}")
    if f.split_mode not in SPLIT_MODES:
        raise UserError(f"unknown --split-mode {f.split_mode!r}; valid: {', '.join(SPLIT_MODES)}")
    if f.redraw not in REDRAWS:
        raise UserError(f"unknown --redraw {f.redraw!r}; valid: {', '.join(REDRAWS)}")
    if f.reset_from is not None and f.reset_from not in layer_names(model):
        raise UserError(f"--reset-from: unknown layer {f.reset_from!r} of {type(model).__name__}; valid: "
                        f"{', '.join(layer_names(model))}")
    for name, value in (("--split-rate", f.split_rate), ("--keep", f.kept_fraction),
                        ("--output-rate-factor", f.output_rate_factor)):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{name} must be in [0, 1], got {value!r}")


def _llf_scope(model: nn.Module, f: Forgetting) -> tuple[list[str], list[nn.Module]]:
    """(parameter names, BatchNorm modules) llf forgets: everything from the layer onward (BatchNorm only with
    `reset_bn`). Registration order: a module's parameters come after those of the modules before it."""
    layer = f.reset_from if f.reset_from is not None else _output_module(model)
    modules = [(n, m) for n, m in model.named_modules()]
    first = next(i for i, (n, _) in enumerate(modules) if n == layer)
    later = {n for n, _ in modules[first:]}
    scope, norms = [], []
    for n, m in modules:
        if n not in later:
            continue
        if isinstance(m, _NORMS):
            if f.reset_bn:
                norms.append(m)
                scope += [_join(n, leaf) for leaf, _ in m.named_parameters(recurse=False)]
            continue
        scope += [_join(n, leaf) for leaf, _ in m.named_parameters(recurse=False)]
    order = [n for n, _ in model.named_parameters()]
    return sorted(scope, key=order.index), norms


def _norm_parameters(model: nn.Module) -> tuple[list[str], list[nn.Module]]:
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, _NORMS)]
    return [_join(n, leaf) for n, m in mods for leaf, _ in m.named_parameters(recurse=False)], [m for _, m in mods]


# -------------------------------------------------------------------------------------------- the masks
@torch.no_grad()
def keep_masks(model: nn.Module, f: Forgetting, *, seed: int, generation: int) -> tuple[dict[str, torch.Tensor], list[nn.Module]]:
    """({touched parameter: bool keep mask (CPU)}, BatchNorm modules whose statistics are reset): what
    `forget_` changes, without changing anything. Draws come from generators of (seed, generation), so the
    same call gives the same masks."""
    check(model, f)
    params = dict(model.named_parameters())
    ones = lambda n: torch.ones(params[n].shape, dtype=torch.bool)
    zeros = lambda n: torch.zeros(params[n].shape, dtype=torch.bool)
    masks: dict[str, torch.Tensor] = {}
    norms: list[nn.Module] = []
    if f.method == "llf":
        scope, norms = _llf_scope(model, f)
        return {n: zeros(n) for n in scope}, norms
    weighted = _weighted(model)
    output = _output_module(model)
    if f.method == "ke":
        if f.split_mode == "wels":
            g = seeding.generator("forget-wels", seed)   # one draw per seed: the same fit hypothesis every generation
        for i, (name, m) in enumerate(weighted):
            w = _join(name, "weight")
            out_units, in_units = m.weight.shape[0], m.weight.shape[1]
            if f.split_mode == "kels":
                keep_out = out_units if name == output else math.ceil(f.split_rate * out_units)
                keep_in = in_units if i == 0 else math.ceil(f.split_rate * in_units)
                mask = zeros(w)
                mask[:keep_out, :keep_in] = True
                masks[w] = mask
                if m.bias is not None:
                    b = zeros(_join(name, "bias"))
                    b[:keep_out] = True
                    masks[_join(name, "bias")] = b
            else:
                masks[w] = torch.rand(m.weight.shape, generator=g) < f.split_rate
    elif f.method == "random":
        g = seeding.generator("forget-random", seed, generation)
        for name, m in weighted:
            w = _join(name, "weight")
            n = m.weight.numel()
            chosen = torch.randperm(n, generator=g)[:kept_count(n, f.layer_keep(name == output))]
            mask = torch.zeros(n, dtype=torch.bool)
            mask[chosen] = True
            masks[w] = mask.view(m.weight.shape)
    elif f.method == "imp":
        for name, m in weighted:
            w = _join(name, "weight")
            n = m.weight.numel()
            order = torch.argsort(m.weight.detach().abs().flatten().cpu(), descending=True, stable=True)
            mask = torch.zeros(n, dtype=torch.bool)
            mask[order[:kept_count(n, f.layer_keep(name == output))]] = True
            masks[w] = mask.view(m.weight.shape)
            if m.bias is not None:
                masks[_join(name, "bias")] = ones(_join(name, "bias"))   # kept, and rewound with the rest
    if f.reset_bn:
        names, norms = _norm_parameters(model)
        masks.update({n: zeros(n) for n in names})
    return masks, norms


def _redraw_seed(f: Forgetting, seed: int, generation: int) -> int:
    return seeding.derive_seed("forget-redraw", seed) if f.fix_seed else seeding.derive_seed("forget-redraw", seed, generation)


@torch.no_grad()
def forget_(model: nn.Module, f: Forgetting, *, init_state: dict[str, torch.Tensor] | None = None, seed: int,
            generation: int) -> dict[str, torch.Tensor]:
    """Apply operation `f` to `model` in place; returns its keep masks ({touched parameter: bool, CPU}).

    `init_state`: the network's initial weights (a state dict), needed by imp (it rewinds to them).
    `generation` picks the draw (a generation of `ticketlab forget`, a probe's step): random masks and, unless
    `fix_seed`, the redrawn values differ between generations; KE's fit hypothesis never does."""
    masks, norms = keep_masks(model, f, seed=seed, generation=generation)
    params = dict(model.named_parameters())
    if f.method == "imp" and init_state is None:
        raise ValueError("forget_: imp rewinds to the initial weights: give init_state")
    norm_names = set(_norm_parameters(model)[0])
    need_init = (f.redraw == "init" and f.method != "imp") or any(n in norm_names for n in masks)
    fresh = _fresh(model, f.init, _redraw_seed(f, seed, generation)) if need_init else {}
    for n, keep in masks.items():
        p = params[n]
        keep = keep.to(p.device)
        if n in norm_names:              # BatchNorm (reset_bn): weight 1, bias 0, whatever the redraw
            new = fresh[n]
        elif f.method == "imp":          # kept entries rewound to their initial values, the rest zero
            new = torch.where(keep, init_state[n].to(p.device, p.dtype), torch.zeros_like(p))
        elif f.redraw == "zero":
            new = torch.where(keep, p, torch.zeros_like(p))
        else:
            new = torch.where(keep, p, fresh[n].to(p.device, p.dtype))
        p.copy_(new)
    for m in norms:
        if m.track_running_stats:
            m.reset_running_stats()
    return masks


def _fresh(model: nn.Module, init: str, seed: int) -> dict[str, torch.Tensor]:
    """A fresh initialisation of the whole model from `seed` (the model's own `models.initialize`)."""
    from .. import models   # here: the models package imports this one's neighbours

    twin = copy.deepcopy(model)
    models.initialize(twin, seed=seed, init=init)
    return {n: p.detach() for n, p in twin.named_parameters()}


# ---------------------------------------------------------------------------------------------- freezing
def freeze_mask(model: nn.Module, masks: dict[str, torch.Tensor], mode: str) -> Mask | None:
    """What holds still while the network relearns after `forget_` (its `masks`): `kept` freezes every entry
    that kept its value (the parameters the operation did not touch included) and trains the forgotten ones;
    `reset` freezes the forgotten entries at their new values and trains the rest; `none`: None. The result
    is a `Mask` over every parameter (True = trained) whose fill values are the current ones, so re-applying
    it after each optimizer step (`ApplyMask`) keeps the frozen entries exactly where they are."""
    if mode not in FREEZE:
        raise UserError(f"unknown --freeze {mode!r}; valid: {', '.join(FREEZE)}")
    if mode == "none":
        return None
    trained, fill, order = {}, {}, []
    for n, p in model.named_parameters():
        keep = masks[n].to(torch.bool).cpu() if n in masks else torch.ones(p.shape, dtype=torch.bool)
        trained[n] = ~keep if mode == "kept" else keep
        fill[n] = p.detach().cpu().clone()
        order.append(n)
    return Mask(trained, order, fill=fill)
