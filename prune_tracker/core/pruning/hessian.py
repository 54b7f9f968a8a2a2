"""`hessian`: Optimal Brain Damage on channel groups (LeCun et al. 1989, as Torch-Pruning's GroupHessianImportance).

Why: the second-order term of the loss change, 1/2 * H_ii * w_i^2, is what removing a weight at a minimum costs
(where the first-order term vanishes); OBD keeps the Hessian's diagonal. Score: per channel, w^2 * h summed over the
group's filters and input slices, h the empirical Fisher (mean squared per-image gradient of the cross-entropy over
`samples` calibration images, eval mode), averaged over the group's layers and normalised by the group mean. The
squared gradients are accumulated here (Torch-Pruning 1.6.1's `accumulate_grad` keys its sums by name but looks them
up by parameter, so it keeps only the last image). Options, groups and scopes: `criteria.py`.
"""

from __future__ import annotations

from typing import Any

import torch_pruning as tp
from torch import nn

from .base import PruneContext, register_method
from .criteria import CRITERION_OPTIONS, CriterionMethod
from .gradients import accumulate_squared_gradients


@register_method("hessian")
class Hessian(CriterionMethod):
    params = {**CRITERION_OPTIONS, "samples": 64}
    minimums = {**CriterionMethod.minimums, "samples": 1}
    summary = "Optimal Brain Damage w^2 * diag(H) (empirical Fisher) per channel group, channels removed"

    def importance(self, opts: dict[str, Any]) -> tp.importance.Importance:
        return tp.importance.GroupHessianImportance()

    def prepare(self, model: nn.Module, ctx: PruneContext, opts: dict[str, Any]) -> None:
        accumulate_squared_gradients(model, ctx, self.name, opts["samples"])
