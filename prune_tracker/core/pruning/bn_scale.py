"""`bn_scale`: network slimming (Liu et al., ICCV 2017, "Learning Efficient Convolutional Networks through Network
Slimming"; Torch-Pruning's BNScaleImportance).

Why: a BatchNorm scale gamma multiplies its whole channel, so |gamma| is a direct, free measure of what the channel
passes on; trained with an L1 penalty on gamma (`train --bn-sparsity` / MLproject `bn_sparsity`, Liu et al. use
1e-4 on CIFAR VGG and 1e-5 on ResNets), many scales go to ~0 and those channels can go at almost no cost. Score:
per channel, |gamma| averaged over the BatchNorms of its group, not normalised (unlike the other criteria and
Torch-Pruning's default), so that `global=true` is the paper's one threshold on every scale of the network. A
group without a BatchNorm (a squeeze-excitation Linear, VGG's classifier) is kept whole (`unscored`); a model
without any is a one-line error.
Options, groups and scopes: `criteria.py`.
"""

from __future__ import annotations

from typing import Any

import torch_pruning as tp
from torch import nn

from .base import register_method
from .criteria import CriterionMethod


@register_method("bn_scale")
class BnScale(CriterionMethod):
    summary = "network slimming: |BatchNorm scale| per channel group, channels removed (Liu et al. 2017)"
    cannot_score = "bn_scale scores a channel by its BatchNorm scale and no prunable group has a BatchNorm"

    def importance(self, opts: dict[str, Any]) -> tp.importance.Importance:
        return tp.importance.BNScaleImportance(normalizer=None)  # raw |gamma|: one global threshold, as Liu et al.

    def check_model(self, model: nn.Module, options: dict[str, Any]) -> None:
        super().check_model(model, options)
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine for m in model.modules()):
            raise ValueError(f"{self.name}: {type(model).__name__} has no BatchNorm with a scale: bn_scale scores a "
                             "channel by its BatchNorm scale; use group_norm, taylor, hessian or fpgm")
