"""`global_l1`: one-shot global magnitude pruning, no retraining.

Why: the simplest strong unstructured baseline; one threshold over all prunable layers lets redundant
(large) layers lose more than small ones. Uses `prune.global_unstructured(L1Unstructured)`.
Ratio: fraction of the prunable weights (stem conv and classifier excluded by default) set to zero.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.utils import prune

from .base import PruneContext, PruneResult, PruningMethod, register_method
from .common import LAYER_OPTIONS, prune_globally, target_layers, unstructured_result


@register_method("global_l1")
class GlobalL1(PruningMethod):
    structured = False
    params = dict(LAYER_OPTIONS)
    summary = "global magnitude (L1) over all prunable layers, one shot"

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        prune_globally(target_layers(model, opts), ratio, prune.L1Unstructured)
        return unstructured_result(model, opts)
