"""`random_channels`: random filter removal (structured baseline), same scope as `li_filters`.

Why: the control for any filter-importance criterion; Liu et al. ("Rethinking the Value of Network
Pruning", 2019) found random/uniform structures often close to L1 ones after fine-tuning, so a structured
method has to beat this to claim its criterion matters. Ratio: fraction of channels removed per layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import PruneContext, PruneResult, PruningMethod, register_method
from .channels import channel_scope, n_remove, remove_channels
from .layers import channels_per_layer
from .structured import STRUCTURED_OPTIONS, structured_result


@register_method("random_channels")
class RandomChannels(PruningMethod):
    structured = True
    changes_architecture = True
    ratio_kind = "channels"
    params = {**STRUCTURED_OPTIONS, "seed": 0}
    summary = "random filter removal (structured baseline)"

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        layers = channel_scope(model, opts["skip_last"])
        before = channels_per_layer(model)
        gen = torch.Generator().manual_seed(opts["seed"])
        plan = {}
        for layer in layers:
            c = layer.conv.out_channels
            plan[layer.name] = sorted(torch.randperm(c, generator=gen)[: n_remove(c, ratio)].tolist())
        kept = remove_channels(model, plan, ctx.example_input, opts["skip_last"])
        return structured_result(model, layers, before, kept)
