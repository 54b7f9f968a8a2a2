"""`group_norm`: DepGraph's group magnitude (Fang et al., CVPR 2023, "DepGraph: Towards Any Structural Pruning";
Torch-Pruning's GroupMagnitudeImportance).

Why: a channel of a coupled group lives in several layers at once (the filter writing it, its BN, every input
slice reading it, every conv added to it by a residual); DepGraph scores it by the L2 norm over all of them rather
than by one filter, and reaches ResNet-56 at 2.11x fewer FLOPs with -0.07 points without sparse training ("Ours
w/o SL" in Torch-Pruning's benchmark). Score: sum of w^2 over the channel's weights in each layer of the group
(conv/Linear filters and input slices, BN and LayerNorm scales), averaged over the layers, normalised by the group
mean. No data needed. Options, groups and scopes: `criteria.py`.
"""

from __future__ import annotations

from typing import Any

import torch_pruning as tp

from .base import register_method
from .criteria import CriterionMethod


@register_method("group_norm")
class GroupNorm(CriterionMethod):
    summary = "DepGraph group L2 magnitude over every coupled layer, channels removed (Fang et al. 2023)"

    def importance(self, opts: dict[str, Any]) -> tp.importance.Importance:
        return tp.importance.GroupMagnitudeImportance(p=2)
