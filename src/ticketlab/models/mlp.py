"""Fully connected ReLU networks.

- LeNet-300-100: LeCun et al. 1998, as used by Frankle & Carbin 2019 (LTH) and OpenLTH `mnist_lenet_300_100`.
- MNIST-1D MLP: Greydanus 2020 (greydanus/mnist1d), in-100-100-10.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten, then Linear+ReLU for each hidden width, then the output Linear `fc` (no ReLU)."""

    def __init__(self, in_features: int, widths: tuple[int, ...], num_classes: int):
        super().__init__()
        sizes = (in_features, *widths)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.fc = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.fc(x)


def mlp(input_shape: tuple[int, ...], num_classes: int, widths: tuple[int, ...]) -> MLP:
    return MLP(math.prod(input_shape), widths, num_classes)
