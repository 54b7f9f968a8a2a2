"""`fpgm`: Filter Pruning via Geometric Median (He et al., CVPR 2019; Torch-Pruning's FPGMImportance).

Why: a small norm does not make a filter useless, and a large one does not make it irreplaceable; FPGM removes the
filters closest to the others (near the geometric median of the layer), whose information the rest can carry.
Score: per channel, the summed Euclidean distance of its |w|^2 filter (and input slices) to all the others of the
same layer, averaged over the group's conv / Linear layers and normalised by the group mean (BatchNorm is not
read). No data needed. Options, groups and scopes: `criteria.py`.
"""

from __future__ import annotations

from typing import Any

import torch_pruning as tp

from .base import register_method
from .criteria import CriterionMethod


@register_method("fpgm")
class Fpgm(CriterionMethod):
    summary = "filters nearest the geometric median of their layer, channels removed (He et al. 2019)"

    def importance(self, opts: dict[str, Any]) -> tp.importance.Importance:
        return tp.importance.FPGMImportance(p=2)
