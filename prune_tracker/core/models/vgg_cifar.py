"""VGG with BatchNorm, CIFAR variant (as in Li et al. 2017, Sec. 4.1): 3x3 convs with BN, max-pooling,
then Linear(512, 512) + BN + ReLU and Linear(512, num_classes). No dropout. `width` scales every conv's channels
and the hidden Linear's 512 features (`models.width`: round(width * c), at least 1)."""

from __future__ import annotations

import torch
from torch import nn

from .width import DEFAULT_WIDTH, scaled, validate_width

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    def __init__(self, config: list[int | str], num_classes: int = 10, width: float = DEFAULT_WIDTH):
        super().__init__()
        self.width = validate_width(width)
        hidden = scaled(512, self.width)
        layers: list[nn.Module] = []
        in_channels = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                channels = scaled(int(item), self.width)
                layers += [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                           nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
                in_channels = channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def vgg11_bn(num_classes: int = 10, width: float = DEFAULT_WIDTH) -> CifarVGG:
    return CifarVGG(CONFIGS["vgg11"], num_classes, width)


def vgg16_bn(num_classes: int = 10, width: float = DEFAULT_WIDTH) -> CifarVGG:
    return CifarVGG(CONFIGS["vgg16"], num_classes, width)


def vgg19_bn(num_classes: int = 10, width: float = DEFAULT_WIDTH) -> CifarVGG:
    return CifarVGG(CONFIGS["vgg19"], num_classes, width)
