"""Seeded initialisation of every parameter and buffer of a model, from one generator.

OpenLTH initialises from the global RNG, so two runs with the "same" seed can differ; here every draw comes
from a private `torch.Generator` seeded with `seed`, visiting modules in `model.modules()` order, and the
global RNG is never touched.
"""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.errors import UserError, unknown_name

INITS: tuple[str, ...] = ("kaiming_normal", "kaiming_uniform", "glorot_normal", "glorot_uniform")

# Kaiming (He et al. 2015): fan_in mode with the ReLU gain sqrt(2). Glorot (Glorot & Bengio 2010): Xavier.
_DRAW = {
    "kaiming_normal": lambda w, g: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu", generator=g),
    "kaiming_uniform": lambda w, g: nn.init.kaiming_uniform_(w, mode="fan_in", nonlinearity="relu", generator=g),
    "glorot_normal": lambda w, g: nn.init.xavier_normal_(w, generator=g),
    "glorot_uniform": lambda w, g: nn.init.xavier_uniform_(w, generator=g),
}

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_NORMS = (nn.modules.batchnorm._BatchNorm,)


def check_init(init: str) -> None:
    if init not in _DRAW:
        raise unknown_name("init", init, INITS)


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"seed must be an integer, got {seed!r}")
    return seed


@torch.no_grad()
def initialize(model: nn.Module, *, seed: int, init: str = "kaiming_normal") -> None:
    """(Re)initialise `model` in place: Linear/Conv weights by `init`, biases 0, BatchNorm weight 1 and bias 0,
    BatchNorm running statistics reset. Same seed and init give bit-identical weights on any device, because
    draws are made on the CPU in float32 and then copied into the parameter.
    """
    check_init(init)
    generator = torch.Generator(device="cpu").manual_seed(check_seed(seed))
    draw = _DRAW[init]
    for module in model.modules():
        if isinstance(module, WEIGHTED):
            weight = torch.empty(module.weight.shape, dtype=torch.float32)
            module.weight.copy_(draw(weight, generator))
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, _NORMS):
            if module.affine:
                module.weight.fill_(1.0)
                module.bias.zero_()
            if module.track_running_stats:
                module.reset_running_stats()
        elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            # build() allocates uninitialised memory; a module we do not know would keep garbage.
            raise TypeError(f"initialize does not know how to initialise {type(module).__name__}")
