"""`layer_l1`: uniform per-layer magnitude pruning (baseline).

Why: the control for global/LAMP allocation: every prunable layer loses the same fraction `ratio` of its
smallest-|w| weights (`prune.l1_unstructured`), so any gain of a global or layer-adaptive method is due
to its allocation, not to the magnitude criterion.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.utils import prune

from .base import PruneContext, PruneResult, PruningMethod, register_method
from .common import LAYER_OPTIONS, target_layers, unstructured_result


@register_method("layer_l1")
class LayerL1(PruningMethod):
    structured = False
    params = dict(LAYER_OPTIONS)
    summary = "uniform per-layer magnitude pruning (baseline)"

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        for _, module in target_layers(model, opts):
            prune.l1_unstructured(module, "weight", amount=int(round(ratio * module.weight.numel())))
        return unstructured_result(model, opts)
