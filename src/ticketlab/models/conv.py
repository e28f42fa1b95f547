"""Small convolutional networks.

- Conv-2/4/6: Frankle & Carbin 2019 (LTH, Fig. 2 / Table 1), also used by Zhou et al. 2019 (Deconstructing
  Lottery Tickets): 3x3 same-padding convs with ReLU, a 2x2 max-pool after each pair, then FC 256-256-classes.
- MNIST-1D CNN: Greydanus 2020, `ConvBase` of greydanus/mnist1d: three strided Conv1d layers and a Linear.
"""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.errors import UserError

CONV_PLANS: dict[str, tuple[int, ...]] = {
    "conv2": (64, 64),
    "conv4": (64, 64, 128, 128),
    "conv6": (64, 64, 128, 128, 256, 256),
}


class ConvNet(nn.Module):
    """Conv-2/4/6 of Frankle & Carbin 2019: pairs of 3x3 convs (bias, ReLU), max-pool 2x2 after each pair,
    then Linear+ReLU to 256, Linear+ReLU to 256 and the output Linear `fc`."""

    def __init__(self, input_shape: tuple[int, ...], filters: tuple[int, ...], num_classes: int,
                 hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        channels, height, width = _image_shape(input_shape, pools=len(filters) // 2, model=f"conv{len(filters)}")
        convs = []
        for out in filters:
            convs.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
            channels = out
        self.convs = nn.ModuleList(convs)
        pools = len(filters) // 2
        sizes = (channels * (height >> pools) * (width >> pools), *hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.fc = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            if i % 2 == 1:
                x = nn.functional.max_pool2d(x, 2)
        x = x.flatten(1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.fc(x)


def conv_net(name: str):
    def make(input_shape: tuple[int, ...], num_classes: int, widths=None) -> ConvNet:
        return ConvNet(input_shape, CONV_PLANS[name], num_classes)
    return make


class MNIST1DCNN(nn.Module):
    """`ConvBase` of greydanus/mnist1d: Conv1d(1,25,5,s2,p1)-ReLU-Conv1d(25,25,3,s2,p1)-ReLU-
    Conv1d(25,25,3,s2,p1)-ReLU-Linear(25*L', classes); L' = 5 for the standard length 40."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: int = 25):
        super().__init__()
        if len(input_shape) == 2 and input_shape[0] == 1:
            length = input_shape[1]
        elif len(input_shape) == 1:
            length = input_shape[0]
        else:
            raise UserError(f"mnist1d_cnn takes input shape (L,) or (1, L), got {tuple(input_shape)}")
        out_length = length
        for kernel in (5, 3, 3):
            out_length = (out_length + 2 - kernel) // 2 + 1
        if out_length < 1:
            raise UserError(f"mnist1d_cnn needs a signal of length >= 3, got {length}")
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.fc = nn.Linear(channels * out_length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).unsqueeze(1)  # [B, L] or [B, 1, L] -> [B, 1, L]
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.fc(x.flatten(1))


def mnist1d_cnn(input_shape: tuple[int, ...], num_classes: int, widths=None) -> MNIST1DCNN:
    return MNIST1DCNN(input_shape, num_classes)


def _image_shape(input_shape: tuple[int, ...], *, pools: int, model: str) -> tuple[int, int, int]:
    """Check that `input_shape` is (C, H, W) and that H and W survive `pools` halvings."""
    if len(input_shape) != 3:
        raise UserError(f"{model} takes an image input shape (C, H, W), got {tuple(input_shape)}")
    channels, height, width = input_shape
    if min(height, width) >> pools < 1:
        raise UserError(f"{model} needs height and width >= {2 ** pools} for its {pools} pools, "
                        f"got {height}x{width}")
    return channels, height, width
