"""The ratio at which a method reaches a footprint target. The target is a ceiling: every probe prunes with the
method itself (its own scores spread the zeros, and where the zeros sit decides each tensor's format and index
widths), and the search returns a ratio whose measured footprint is at or under the target."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

from torch import nn

from .base import PruneContext, PruningMethod
from .masks import make_permanent

MAX_RATIO = 0.99


def _no_finetune(*_args, **_kwargs) -> None:
    """Probes measure where the zeros fall, not how well the model recovers."""


def footprint_probe(
    model: nn.Module, method: PruningMethod, options: dict, ctx: PruneContext, measure: Callable[[nn.Module], float]
) -> Callable[[float], float]:
    """`probe(ratio)`: the footprint measured on a copy of `model` pruned by `method` at that ratio."""
    probe_ctx = dataclasses.replace(ctx, finetune=_no_finetune, log=lambda _msg: None)

    def probe(ratio: float) -> float:
        pruned = method.prune(copy.deepcopy(model), ratio, probe_ctx, **options).model
        make_permanent(pruned)
        return measure(pruned)

    return probe


def search_ratio(
    probe: Callable[[float], float], target: float, label: str = "the method", tolerance: float = 0.005
) -> float:
    """Bisect the smallest ratio (within `tolerance`) whose probed footprint is <= `target`. Only ratios that
    were measured at or under the target are ever returned, so a footprint that is not monotone in the ratio
    (index widths change at boundaries) can cost precision, never the ceiling."""
    if probe(0.0) <= target:
        return 0.0
    reached = probe(MAX_RATIO)
    if reached > target:
        raise ValueError(f"target {target:.0f} bytes is below what {label} reaches at ratio {MAX_RATIO} "
                         f"({reached:.0f} bytes)")
    low, high = 0.0, MAX_RATIO
    while high - low > tolerance:
        middle = (low + high) / 2
        if probe(middle) > target:
            low = middle
        else:
            high = middle
    return round(high, 4) if probe(round(high, 4)) <= target else high
