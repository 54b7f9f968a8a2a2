"""The width multiplier of the zoo's CIFAR families (ResNet 6n+2, ResNet-18, VGG): every channel count c of the
architecture becomes ``max(1, floor(width * c + 0.5))`` (round half up, at least one channel; no rounding to a
multiple, so a dense model of about any byte size can be built). ``width=1`` builds exactly the published model."""

from __future__ import annotations

import math

DEFAULT_WIDTH = 1.0


def validate_width(width: float) -> float:
    """``width`` as a float; ValueError (one line) unless it is a finite number > 0."""
    try:
        value = float(width)
    except (TypeError, ValueError):
        raise ValueError(f"width={width!r} is not allowed; expected a finite number > 0 (e.g. 0.5)") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"width={width!r} is not allowed; expected a finite number > 0 (e.g. 0.5)")
    return value


def scaled(channels: int, width: float) -> int:
    """The channel count ``channels`` at ``width``: round half up, at least 1."""
    if width == DEFAULT_WIDTH:
        return channels
    return max(1, math.floor(width * channels + 0.5))
