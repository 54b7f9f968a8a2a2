"""Shared part of the channel-removing methods: options, the result, per-layer bookkeeping."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import PruneResult
from .channels import ChannelLayer
from .layers import channels_per_layer

STRUCTURED_OPTIONS: dict[str, Any] = {"skip_last": 0}  # VGG: leave the last N convs unpruned


def structured_result(
    model: nn.Module,
    layers: list[ChannelLayer],
    before: dict[str, int],
    kept: dict[str, list[int]],
    finetuned_epochs: float = 0.0,
    **details: Any,
) -> PruneResult:
    """Per-layer channels before/after and kept indices (of the layer as it was when cut)."""
    after = channels_per_layer(model)
    details.update(
        {
            "layers": {
                layer.name: {
                    "channels_before": before[layer.name],
                    "channels_after": after[layer.name],
                    "ratio": 1.0 - after[layer.name] / before[layer.name],
                }
                for layer in layers
            },
            "kept_channels": kept,
        }
    )
    return PruneResult(model=model, structured=True, details=details, finetuned_epochs=finetuned_epochs)
