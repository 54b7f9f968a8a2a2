"""The residual basic block the CIFAR ResNet families share (He et al. 2016, Fig. 2 left)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN residual branch plus a shortcut. The shortcut is
    `identity_shortcut()`, or `make_shortcut(...)` where the shape changes; a subclass picks both (option A
    zero-pad, option B projection) and the forward pass. The shortcut is built after the branch's layers, so
    the order of the module names and of the seeded initialisation is that of each family's original block."""

    identity_shortcut: type[nn.Module] = nn.Identity

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = self.identity_shortcut()
        if stride != 1 or in_planes != planes:
            self.shortcut = self.make_shortcut(in_planes, planes, stride)

    def make_shortcut(self, in_planes: int, planes: int, stride: int) -> nn.Module:
        raise NotImplementedError

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch (before the addition and the last ReLU)."""
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
