"""`mnist1d_cnn_bn`: the MNIST-1D CNN of Greydanus 2020 (`ConvBase`) with BatchNorm after each convolution
(convolutions without bias, as BatchNorm's shift replaces it), for Early-Bird tickets (You et al. 2020),
whose channel masks come from the BatchNorm scales. Any input is read as a 1-D signal ([B, L] or
[B, 1, L]; images are flattened), so it also runs on the `synthetic` set.

`channels` may differ per layer: channel pruning (`ticketlab.instruments.channel_prune`) builds the
smaller network as an instance of this class.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ticketlab.errors import UserError

KERNELS = (5, 3, 3)


class MNIST1DCNNBN(nn.Module):
    """Conv1d(1,c1,5,s2,p1)-BN-ReLU-Conv1d(c1,c2,3,s2,p1)-BN-ReLU-Conv1d(c2,c3,3,s2,p1)-BN-ReLU-Linear(c3*L', classes)."""

    def __init__(self, length: int, num_classes: int, channels: tuple[int, int, int] = (25, 25, 25)):
        super().__init__()
        out_length = length
        for kernel in KERNELS:
            out_length = (out_length + 2 - kernel) // 2 + 1
        if out_length < 1:
            raise UserError(f"mnist1d_cnn_bn needs a signal of length >= 3, got {length}")
        self.length, self.out_length = length, out_length
        c_in = 1
        for i, (c, kernel) in enumerate(zip(channels, KERNELS), start=1):
            setattr(self, f"conv{i}", nn.Conv1d(c_in, c, kernel, stride=2, padding=1, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm1d(c))
            c_in = c
        self.fc = nn.Linear(channels[-1] * out_length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).unsqueeze(1)
        for i in (1, 2, 3):
            x = torch.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return self.fc(x.flatten(1))


def mnist1d_cnn_bn(input_shape: tuple[int, ...], num_classes: int, widths=None) -> MNIST1DCNNBN:
    return MNIST1DCNNBN(math.prod(input_shape), num_classes)
