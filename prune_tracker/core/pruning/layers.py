"""Which layers a method may touch."""

from __future__ import annotations

from torch import nn

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def prunable_layers(
    model: nn.Module, keep_first: bool = True, keep_last: bool = True
) -> list[tuple[str, nn.Module]]:
    """Conv2d and Linear layers in `model.modules()` order. By default the first conv (stem: few weights,
    most sensitive, Han et al. 2015 Sec. 5) and the last Linear (classifier) stay dense, as the papers do."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    if keep_first and layers and isinstance(layers[0][1], nn.Conv2d):
        layers = layers[1:]
    if keep_last and layers and isinstance(layers[-1][1], nn.Linear):
        layers = layers[:-1]
    return layers


def channels_per_layer(model: nn.Module) -> dict[str, int]:
    """Output channels (Conv2d) / features (Linear) of every layer, for logging."""
    return {
        name: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, PRUNABLE_TYPES)
    }
