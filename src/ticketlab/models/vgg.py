"""VGG with batch norm for CIFAR (Simonyan & Zisserman 2015), as OpenLTH `models/cifar_vgg.py`
(facebookresearch/open_lth): 3x3 convs with bias + BN + ReLU, 2x2 max-pools at 'M', average pooling of the final
map and one Linear(512, classes). VGG-16 has 14,728,266 parameters on CIFAR-10; it is the network of Early-Bird
(You et al. 2020) and of the CIFAR experiments of Frankle et al. 2019/2020.
"""

from __future__ import annotations

import torch
from torch import nn

from ticketlab.models.conv import _image_shape

PLANS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
}


class ConvModule(nn.Module):
    def __init__(self, f_in: int, f_out: int):
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(f_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class VGG(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], depth: int, num_classes: int, plan: tuple | None = None):
        """`plan` overrides the depth's channel plan (same pools), e.g. for a channel-pruned copy."""
        super().__init__()
        self.input_shape, self.depth = tuple(input_shape), depth
        plan = PLANS[depth] if plan is None else tuple(plan)
        channels, _, _ = _image_shape(input_shape, pools=plan.count("M"), model=f"vgg{depth}_bn")
        layers = []
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(ConvModule(channels, spec))
                channels = spec
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(x)
        # OpenLTH applies AvgPool2d(2) to the 2x2 map of a 32x32 input, i.e. a global average; a global mean
        # keeps the 512 features for any input size.
        x = x.mean(dim=(2, 3))
        return self.fc(x)


def vgg(depth: int):
    def make(input_shape: tuple[int, ...], num_classes: int, widths=None) -> VGG:
        return VGG(input_shape, depth, num_classes)
    return make
