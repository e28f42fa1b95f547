"""Model registry: the networks of the lottery-ticket papers, built with a seeded initialisation.

`build(name, input_shape, num_classes, seed=...)` gives a plain `nn.Module` (no Python-side state, no randomness
in forward) whose every initial value comes from one generator seeded with `seed`; `prunable_names` and
`output_name` say which parameters the pruning code works on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ticketlab.errors import UserError, unknown_name
from ticketlab.models.conv import conv_net, mnist1d_cnn
from ticketlab.models.conv_bn import mnist1d_cnn_bn
from ticketlab.models.init import INITS, WEIGHTED, check_init, check_seed, initialize
from ticketlab.models.mlp import mlp
from ticketlab.models.resnet import resnet, resnet18
from ticketlab.models.vgg import vgg

__all__ = ["MODELS", "INITS", "build", "initialize", "prunable_names", "output_name"]


@dataclass(frozen=True)
class _Entry:
    make: Callable[[tuple[int, ...], int, tuple[int, ...] | None], nn.Module]
    default_widths: tuple[int, ...] | None = None  # None: the model takes no widths
    fixed_widths: bool = False  # the widths are part of the architecture's name


_REGISTRY: dict[str, _Entry] = {
    "lenet_300_100": _Entry(mlp, (300, 100), fixed_widths=True),
    "mlp": _Entry(mlp, (300, 100)),
    "mnist1d_mlp": _Entry(mlp, (100, 100)),
    "mnist1d_cnn": _Entry(mnist1d_cnn),
    "conv2": _Entry(conv_net("conv2")),
    "conv4": _Entry(conv_net("conv4")),
    "conv6": _Entry(conv_net("conv6")),
    "resnet20": _Entry(resnet(20)),
    "vgg16_bn": _Entry(vgg(16)),
    "resnet32": _Entry(resnet(32)),
    "resnet44": _Entry(resnet(44)),
    "resnet56": _Entry(resnet(56)),
    "resnet110": _Entry(resnet(110)),
    "resnet18": _Entry(resnet18),  # ImageNet-style (torchvision's layout and names), for the forget-and-relearn paper
    "vgg11_bn": _Entry(vgg(11)),
    "vgg13_bn": _Entry(vgg(13)),
    "vgg19_bn": _Entry(vgg(19)),
    "mnist1d_cnn_bn": _Entry(mnist1d_cnn_bn),
}

MODELS: tuple[str, ...] = tuple(_REGISTRY)


def build(name: str, input_shape: tuple[int, ...], num_classes: int, *, seed: int,
          init: str = "kaiming_normal", widths: tuple[int, ...] | None = None, meta: bool = False) -> nn.Module:
    """Build model `name` for inputs [B, *input_shape] and `num_classes` logits, initialised by
    `initialize(model, seed=seed, init=init)`. `widths` (hidden layer sizes) only for `mlp` and `mnist1d_mlp`.

    The model is allocated on the meta device and materialised without drawing, so the global torch RNG is
    neither consumed nor changed. `meta=True` returns it unmaterialised (shapes only, no memory): what a
    memory estimate needs before the real model is built.
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise unknown_name("model", name, MODELS)
    check_init(init)
    check_seed(seed)
    input_shape = _check_dims("input_shape", input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    if widths is not None and (entry.default_widths is None or entry.fixed_widths):
        takes = ", ".join(n for n, e in _REGISTRY.items() if e.default_widths is not None and not e.fixed_widths)
        raise UserError(f"model {name!r} takes no widths (only {takes} do), got {widths!r}")
    if entry.default_widths is not None:
        widths = entry.default_widths if widths is None else _check_dims("widths", widths, allow_empty=True)
    with torch.device("meta"):
        model = entry.make(input_shape, num_classes, widths)
    if meta:
        return model
    model.to_empty(device="cpu")
    initialize(model, seed=seed, init=init)
    return model


def prunable_names(model: nn.Module) -> list[str]:
    """Names (as in `model.named_parameters()`) of every nn.Linear / nn.Conv1d / nn.Conv2d weight, in module
    order. Biases and BatchNorm parameters are never pruned (Frankle & Carbin 2019; Zhou et al. 2019)."""
    return [_join(name, "weight") for name, module in model.named_modules() if isinstance(module, WEIGHTED)]


def output_name(model: nn.Module) -> str:
    """The parameter name of the output layer's weight: the last nn.Linear in module order."""
    names = [_join(name, "weight") for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise UserError(f"{type(model).__name__} has no nn.Linear output layer")
    return names[-1]


def _join(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def _check_dims(what: str, dims, *, allow_empty: bool = False) -> tuple[int, ...]:
    try:
        dims = tuple(dims)
    except TypeError:
        raise UserError(f"{what} must be a tuple of positive integers, got {dims!r}") from None
    if (not dims and not allow_empty) or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise UserError(f"{what} must be a tuple of positive integers, got {dims!r}")
    return dims
