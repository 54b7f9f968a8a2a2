"""ResNet-18 of the pytorch-cifar family (kuangliu/pytorch-cifar): ImageNet ResNet-18 with a 3x3 stem,
no max-pool, and 1x1 conv + BN projection shortcuts (option B). 11.2M parameters; `width` scales the channels
(`models.width`: round(width * c), at least 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResidualBasicBlock
from .width import DEFAULT_WIDTH, scaled, validate_width


class BasicBlock(ResidualBasicBlock):
    identity_shortcut = nn.Sequential

    def make_shortcut(self, in_planes: int, planes: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.branch(x) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = DEFAULT_WIDTH):
        super().__init__()
        self.width = validate_width(width)
        in_planes = scaled(64, self.width)
        self.conv1 = nn.Conv2d(3, in_planes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        stages = []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            planes = scaled(planes, self.width)
            stages.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet18(num_classes: int = 10, width: float = DEFAULT_WIDTH) -> ResNet18:
    return ResNet18(num_classes, width)
