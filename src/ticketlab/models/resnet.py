"""CIFAR ResNets (He et al. 2016, Sec. 4.2) as in OpenLTH `models/cifar_resnet.py` (facebookresearch/open_lth).

ResNet-N, N = 6D + 2: a 3x3 conv to 16 filters (no bias) + BN + ReLU, three stages of D basic blocks with
16/32/64 filters (stride 2 in the first block of stages 2 and 3), global average pooling, Linear(64, classes).
A block is conv-BN-ReLU-conv-BN plus a shortcut (identity, or a strided 1x1 conv + BN when the shape changes),
then ReLU. ResNet-20 has 272,474 parameters on CIFAR-10.
"""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.errors import UserError


class Block(nn.Module):
    """A basic residual block; the shortcut is a 1x1 conv + BN only where the shape changes (option B)."""

    def __init__(self, f_in: int, f_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(f_in, f_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        if stride != 1 or f_in != f_out:
            self.shortcut = nn.Sequential(nn.Conv2d(f_in, f_out, kernel_size=1, stride=stride, bias=False),
                                          nn.BatchNorm2d(f_out))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], depth: int, num_classes: int, width: int = 16):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise UserError(f"a CIFAR ResNet has depth 6D+2 with D >= 1 (20, 32, 44, 56, 110), got {depth}")
        if len(input_shape) != 3:
            raise UserError(f"resnet{depth} takes an image input shape (C, H, W), got {tuple(input_shape)}")
        blocks_per_stage = (depth - 2) // 6
        self.conv = nn.Conv2d(input_shape[0], width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, filters = [], width
        for stage, f_out in enumerate((width, 2 * width, 4 * width)):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(Block(filters, f_out, stride))
                filters = f_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(filters, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.conv(x)))
        out = self.blocks(out)
        out = out.mean(dim=(2, 3))  # global average pool; OpenLTH's avg_pool2d over the (square) 8x8 map
        return self.fc(out)


def resnet(depth: int):
    def make(input_shape: tuple[int, ...], num_classes: int, widths=None) -> ResNet:
        return ResNet(input_shape, depth, num_classes)
    return make
