"""CIFAR ResNets of He et al. 2016 (Sec. 4.2): 6n+2 layers, 16/32/64 channels, option-A shortcuts; depths 8, 14,
20, 32, 56, 110, and a `width` multiplier of the channels (`models.width`: round(width * c), at least 1).

Option A: identity shortcuts, and at a stage change a stride-2 subsample with the missing channels
zero-padded. This keeps ResNet-20 at 0.27M parameters, as published.

The padding is computed from the actual channel counts (the block input and the residual branch's output),
so a stage-width channel cut (`prune_tracker.pruning.stages`) that keeps the input channels centred in the
next stage's channels leaves a model that rebuilds from its layer widths alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResidualBasicBlock
from .width import DEFAULT_WIDTH, scaled, validate_width


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the channel dimension from `in_planes` to `planes`
    channels: input channel c lands on output channel (planes - in_planes) // 2 + c.

    The padding is plain int arithmetic on widths (never on tensor values), so the module traces with
    torch.fx. The block passes its current conv widths (conv1's input, conv2's output; a folded BN may be
    gone), so the padding follows the actual channel counts after a stage cut or a rebuild from an
    architecture spec; called alone, it uses the widths it was built with."""

    def __init__(self, in_planes: int, planes: int):
        super().__init__()
        self.in_planes = in_planes
        self.planes = planes

    def forward(self, x: torch.Tensor, in_planes: int | None = None, planes: int | None = None) -> torch.Tensor:
        in_planes = self.in_planes if in_planes is None else in_planes
        planes = self.planes if planes is None else planes
        missing = planes - in_planes
        if missing < 0:
            raise RuntimeError(f"PadShortcut: {in_planes} input channels do not fit {planes}")
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, missing // 2, missing - missing // 2))


class BasicBlock(ResidualBasicBlock):
    expansion = 1

    def make_shortcut(self, in_planes: int, planes: int, stride: int) -> nn.Module:
        return PadShortcut(in_planes, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if isinstance(self.shortcut, PadShortcut):
            return F.relu(out + self.shortcut(x, self.conv1.in_channels, self.conv2.out_channels))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, width: float = DEFAULT_WIDTH):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        self.width = validate_width(width)
        blocks_per_stage = (depth - 2) // 6
        in_planes = scaled(16, self.width)
        self.conv1 = nn.Conv2d(3, in_planes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        stages = []
        for planes, stride in ((scaled(16, self.width), 1), (scaled(32, self.width), 2), (scaled(64, self.width), 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet8(num_classes: int = 10, width: float = DEFAULT_WIDTH) -> CifarResNet:
    return CifarResNet(8, num_classes, width)


def resnet14(num_classes: int = 10, width: float = DEFAULT_WIDTH) -> CifarResNet:
    return CifarResNet(14, num_classes, width)


def resnet20(num_classes: int = 10, width: float = DEFAULT_WIDTH) -> CifarResNet:
    return CifarResNet(20, num_classes, width)


def resnet32(num_classes: int = 10, width: float = DEFAULT_WIDTH) -> CifarResNet:
    return CifarResNet(32, num_classes, width)


def resnet56(num_classes: int = 10, width: float = DEFAULT_WIDTH) -> CifarResNet:
    return CifarResNet(56, num_classes, width)


def resnet110(num_classes: int = 10, width: float = DEFAULT_WIDTH) -> CifarResNet:
    return CifarResNet(110, num_classes, width)
