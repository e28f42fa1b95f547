"""Real channel pruning: from a network with BatchNorm and a channel mask, the smaller dense network that
computes the same function as the masked one (Network Slimming, Liu et al. 2017; Early-Bird, You et al. 2020).

The masked network is the original with gamma = beta = 0 on the pruned channels, so those channels output
exactly 0 after BatchNorm and ReLU; removing them (their filters, their BatchNorm entries and the matching
input slices of the next layer) changes nothing but the cost. Supported: `mnist1d_cnn_bn`, the VGG family
(`vgg11_bn` ... `vgg19_bn`, the Early-Bird paper's network) and the ResNets (`resnet20` ... `resnet110`,
`resnet18`), where only the channels between a block's two convolutions are pruned (`structure.bn_layers`):
the others feed residual sums, which tie a stage's channels together. A layer whose channels would all go
keeps one channel with gamma = beta = 0 (still outputting 0), so shapes stay valid.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..models.conv_bn import MNIST1DCNNBN
from ..models.resnet import ImageNetResNet, ResNet, Residual
from ..models.vgg import VGG, ConvModule
from ..sparse.structure import bn_layers

SUPPORTED = ("mnist1d_cnn_bn", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "resnet20", "resnet32", "resnet44",
             "resnet56", "resnet110", "resnet18")


def split(model: nn.Module, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """A flat channel mask (over `bn_layers(model)` in order) as one bool vector per BatchNorm layer."""
    modules = dict(model.named_modules())
    out, start = {}, 0
    for name in bn_layers(model):
        n = modules[name].num_features
        out[name] = keep[start:start + n].clone()
        start += n
    if start != keep.numel():
        raise ValueError(f"channel mask has {keep.numel()} entries, the network {start} BatchNorm channels")
    return out


@torch.no_grad()
def mask_channels_(model: nn.Module, keep: dict[str, torch.Tensor]) -> None:
    """Zero gamma and beta of the pruned channels in place (the masked network)."""
    modules = dict(model.named_modules())
    for name, k in keep.items():
        bn = modules[name]
        bn.weight[~k.to(bn.weight.device)] = 0
        bn.bias[~k.to(bn.bias.device)] = 0


@torch.no_grad()
def prune_channels(model: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
    """The smaller network. `model` itself is not changed."""
    if isinstance(model, VGG):
        return _prune_vgg(model, keep)
    if isinstance(model, (ResNet, ImageNetResNet)):
        return _prune_resnet(model, keep)
    if not isinstance(model, MNIST1DCNNBN):
        raise UserError(f"real channel pruning supports {', '.join(SUPPORTED)}; got {type(model).__name__}")
    idx, empty = [], []
    for i in (1, 2, 3):
        k = keep[f"bn{i}"].cpu()
        kept = k.nonzero().squeeze(1)
        empty.append(len(kept) == 0)
        idx.append(kept if len(kept) else torch.tensor([0]))
    device = model.fc.weight.device
    small = MNIST1DCNNBN(model.length, model.fc.out_features, tuple(len(i) for i in idx)).to(device)
    previous = None
    for i, rows in enumerate(idx, start=1):
        rows = rows.to(device)
        conv, bn = getattr(model, f"conv{i}"), getattr(model, f"bn{i}")
        w = conv.weight.index_select(0, rows)
        if previous is not None:
            w = w.index_select(1, previous)
        getattr(small, f"conv{i}").weight.copy_(w)
        _copy_bn(getattr(small, f"bn{i}"), bn, rows, empty[i - 1])
        previous = rows
    fc = model.fc.weight.view(model.fc.out_features, -1, model.out_length)
    small.fc.weight.copy_(fc.index_select(1, previous).reshape(model.fc.out_features, -1))
    small.fc.bias.copy_(model.fc.bias)
    small.train(model.training)
    return small


def _copy_bn(little: nn.Module, big: nn.Module, idx: torch.Tensor, empty: bool) -> None:
    """The kept channels' BatchNorm entries; a layer with none kept keeps one channel at gamma = beta = 0."""
    for attr in ("weight", "bias", "running_mean", "running_var"):
        getattr(little, attr).copy_(getattr(big, attr).index_select(0, idx))
    little.num_batches_tracked.copy_(big.num_batches_tracked)
    if empty:
        little.weight.zero_()
        little.bias.zero_()


def _kept_rows(k: torch.Tensor) -> tuple[torch.Tensor, bool]:
    kept = k.cpu().nonzero().squeeze(1)
    return (kept, False) if len(kept) else (torch.tensor([0]), True)


@torch.no_grad()
def _prune_vgg(model: VGG, keep: dict[str, torch.Tensor]) -> VGG:
    """VGG: each ConvModule keeps its channels' filters (and biases) and BatchNorm entries and the next
    layer's matching input slices; max-pools need nothing; the classifier keeps the matching columns."""
    names = [n for n, m in model.layers.named_children() if isinstance(m, ConvModule)]
    rows = {n: _kept_rows(keep[f"layers.{n}.bn"]) for n in names}
    plan = []
    for n, m in model.layers.named_children():
        plan.append(len(rows[n][0]) if isinstance(m, ConvModule) else "M")
    device = model.fc.weight.device
    small = VGG(model.input_shape, model.depth, model.fc.out_features, plan=tuple(plan)).to(device)
    small_layers = dict(small.layers.named_children())
    previous = None
    for n in names:
        idx, empty = rows[n]
        idx = idx.to(device)
        big, little = getattr(model.layers, n), small_layers[n]
        w = big.conv.weight.index_select(0, idx)
        little.conv.weight.copy_(w if previous is None else w.index_select(1, previous))
        little.conv.bias.copy_(big.conv.bias.index_select(0, idx))
        _copy_bn(little.bn, big.bn, idx, empty)
        previous = idx
    small.fc.weight.copy_(model.fc.weight.index_select(1, previous))
    small.fc.bias.copy_(model.fc.bias)
    small.train(model.training)
    return small


def resnet_inner(model: nn.Module) -> list[int]:
    """A ResNet's channels between the two convolutions of each block, in block order."""
    return [m.bn1.num_features for m in model.modules() if isinstance(m, Residual)]


@torch.no_grad()
def _prune_resnet(model: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
    """A ResNet: each block keeps the filters of its first convolution (and their BatchNorm entries) for its
    kept inner channels, and its second convolution the matching input slices; everything else is copied."""
    rows = {n: _kept_rows(keep[n]) for n in bn_layers(model)}
    inner = tuple(len(idx) for idx, _ in rows.values())
    if isinstance(model, ResNet):
        small = ResNet(model.input_shape, model.depth, model.fc.out_features, stages=model.stages, inner=inner)
    else:
        small = ImageNetResNet(model.input_shape, model.blocks_per_stage, model.fc.out_features, model.name,
                               stages=model.stages, inner=inner)
    device = model.fc.weight.device
    small = small.to(device)
    shapes = {k: v.shape for k, v in small.state_dict().items()}
    # every tensor outside the pruned blocks' inner channels has its shape, and is copied as it is
    small.load_state_dict({k: v for k, v in model.state_dict().items() if v.shape == shapes[k]}, strict=False)
    big_modules, little_modules = dict(model.named_modules()), dict(small.named_modules())
    for n, (idx, empty) in rows.items():
        block = n.removesuffix(".bn1")
        big, little, idx = big_modules[block], little_modules[block], idx.to(device)
        little.conv1.weight.copy_(big.conv1.weight.index_select(0, idx))
        _copy_bn(little.bn1, big.bn1, idx, empty)
        little.conv2.weight.copy_(big.conv2.weight.index_select(1, idx))
    small.train(model.training)
    return small


def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """2 x multiply-accumulates of one forward pass of one sample through the convolutions and linear layers,
    counting only nonzero weights (so a masked network's figure is its sparse, theoretical cost)."""
    total = [0]

    def hook(module, inputs, output):
        positions = output[0, 0].numel() if output.dim() > 2 else 1
        total[0] += 2 * int(module.weight.count_nonzero()) * positions

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return total[0]
