"""CIFAR ResNets (He et al. 2016, Sec. 4.2) as in OpenLTH `models/cifar_resnet.py` (facebookresearch/open_lth),
and the ImageNet-style ResNet-18 (`resnet18`, below).

ResNet-N, N = 6D + 2: a 3x3 conv to 16 filters (no bias) + BN + ReLU, three stages of D basic blocks with
16/32/64 filters (stride 2 in the first block of stages 2 and 3), global average pooling, Linear(64, classes).
A block is conv-BN-ReLU-conv-BN plus a shortcut (identity, or a strided 1x1 conv + BN when the shape changes),
then ReLU. ResNet-20 has 272,474 parameters on CIFAR-10.
"""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.errors import UserError


class Residual(nn.Module):
    """What the two basic blocks share: conv3x3-BN-ReLU-conv3x3-BN, `inner` channels between the two
    convolutions (default f_out; fewer in a channel-pruned network), and (`projection`) the 1x1 conv + BN a
    shortcut needs where the shape changes (None where it does not)."""

    def __init__(self, f_in: int, f_out: int, stride: int, inner: int | None = None):
        super().__init__()
        inner = f_out if inner is None else inner
        self.conv1 = nn.Conv2d(f_in, inner, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, f_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)

    @staticmethod
    def projection(f_in: int, f_out: int, stride: int) -> nn.Sequential | None:
        return (nn.Sequential(nn.Conv2d(f_in, f_out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(f_out))
                if stride != 1 or f_in != f_out else None)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class Block(Residual):
    """A basic residual block of the CIFAR ResNets; the shortcut is a 1x1 conv + BN only where the shape
    changes (option B), else the identity (an empty `shortcut`)."""

    def __init__(self, f_in: int, f_out: int, stride: int, inner: int | None = None):
        super().__init__(f_in, f_out, stride, inner)
        self.shortcut = self.projection(f_in, f_out, stride) or nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.residual(x) + self.shortcut(x))


class ResNet(nn.Module):
    """`stages`: the filters of the three stages (the stem has the first stage's); default (w, 2w, 4w) for
    `width` w. Other stage widths are a narrower network (a knowledge-evolution fit hypothesis, `export.py`).
    `inner`: each block's channels between its convolutions (a channel-pruned early-bird ticket)."""

    def __init__(self, input_shape: tuple[int, ...], depth: int, num_classes: int, width: int = 16,
                 stages: tuple[int, int, int] | None = None, inner: tuple[int, ...] | None = None):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise UserError(f"a CIFAR ResNet has depth 6D+2 with D >= 1 (20, 32, 44, 56, 110), got {depth}")
        if len(input_shape) != 3:
            raise UserError(f"resnet{depth} takes an image input shape (C, H, W), got {tuple(input_shape)}")
        stages = tuple(stages) if stages is not None else (width, 2 * width, 4 * width)
        blocks_per_stage = (depth - 2) // 6
        self.conv = nn.Conv2d(input_shape[0], stages[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(stages[0])
        if inner is not None and len(inner) != 3 * blocks_per_stage:
            raise ValueError(f"resnet{depth} has {3 * blocks_per_stage} blocks, got {len(inner)} inner widths")
        self.depth, self.input_shape, self.stages = depth, tuple(input_shape), stages
        blocks, filters = [], stages[0]
        for stage, f_out in enumerate(stages):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(Block(filters, f_out, stride, None if inner is None else inner[len(blocks)]))
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


# ---------------------------------------------------------------------------------------------- ResNet-18
class BasicBlock(Residual):
    """ImageNet ResNet's basic block (He et al. 2016, Table 1; torchvision's `BasicBlock`): conv3x3-BN-ReLU-
    conv3x3-BN plus the shortcut (identity, or `downsample` = strided 1x1 conv + BN where the shape
    changes), then ReLU. Module names are torchvision's."""

    def __init__(self, f_in: int, f_out: int, stride: int, inner: int | None = None):
        super().__init__(f_in, f_out, stride, inner)
        self.downsample = self.projection(f_in, f_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.residual(x) + identity)


class ImageNetResNet(nn.Module):
    """The ImageNet-style ResNet (He et al. 2016, Table 1) with torchvision's layout and names: `conv1`
    (7x7, stride 2, 64 filters, no bias) + `bn1` + ReLU, 3x3 max-pool with stride 2, stages `layer1`..`layer4`
    of basic blocks with 64/128/256/512 filters (`stages`; the stem has the first stage's) (stride 2 in the
    first block of stages 2-4), adaptive average pooling to 1x1, and `fc` (Linear(512, classes)). ResNet-18 (2 blocks a stage) has 11,689,512
    parameters for 1000 classes. Any image of at least 1x1 pixels goes through (the pooling adapts)."""

    def __init__(self, input_shape: tuple[int, ...], blocks: tuple[int, ...], num_classes: int, name: str,
                 stages: tuple[int, ...] = (64, 128, 256, 512), inner: tuple[int, ...] | None = None):
        super().__init__()
        if len(input_shape) != 3:
            raise UserError(f"{name} takes an image input shape (C, H, W), got {tuple(input_shape)}")
        if inner is not None and len(inner) != sum(blocks):
            raise ValueError(f"{name} has {sum(blocks)} blocks, got {len(inner)} inner widths")
        self.name, self.blocks_per_stage, self.input_shape, self.stages = name, tuple(blocks), tuple(input_shape), tuple(stages)
        self.conv1 = nn.Conv2d(input_shape[0], stages[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stages[0])
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        f_in, made = stages[0], 0
        for stage, (count, f_out) in enumerate(zip(blocks, stages), start=1):
            layers = []
            for index in range(count):
                layers.append(BasicBlock(f_in, f_out, 2 if stage > 1 and index == 0 else 1,
                                         None if inner is None else inner[made]))
                made += 1
                f_in = f_out
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(f_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def resnet18(input_shape: tuple[int, ...], num_classes: int, widths=None) -> ImageNetResNet:
    return ImageNetResNet(input_shape, (2, 2, 2, 2), num_classes, "resnet18")
