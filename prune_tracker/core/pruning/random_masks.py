"""`random`: random unstructured masks (baseline).

Why: the control every magnitude criterion must beat (Blalock et al. 2020 Sec. 6). A fraction `ratio` of
the prunable weights, drawn uniformly over all of them (global), is zeroed; seeded.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.utils import prune

from .base import PruneContext, PruneResult, PruningMethod, register_method
from .common import LAYER_OPTIONS, prune_globally, seeded, target_layers, unstructured_result


@register_method("random")
class RandomMasks(PruningMethod):
    structured = False
    params = {**LAYER_OPTIONS, "seed": 0}
    summary = "random unstructured masks (baseline)"

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        layers = target_layers(model, opts)
        with seeded(opts["seed"], ctx.device):
            prune_globally(layers, ratio, prune.RandomUnstructured)
        return unstructured_result(model, opts)
