"""`random_channels`: random filter removal (structured baseline), same scope as `li_filters`.

Why: the control for any filter-importance criterion; Liu et al. ("Rethinking the Value of Network
Pruning", 2019) found random/uniform structures often close to L1 ones after fine-tuning, so a structured
method has to beat this to claim its criterion matters. Ratio: fraction of channels removed per layer
(per stage for the stage cut). `scope`: block | stage | all as `li_filters` (see `stages.py`); the stage
cut draws its coupled channel chains at random (uniformly within each selection group). A model outside the zoo
is cut on its dependency graph (`graph.py`), channels drawn at random per group.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import PruneContext, PruneResult, PruningMethod, register_method
from .channels import ScopeError, channel_scope, n_remove, remove_channels
from .graph import prune_graph, random_scores, uses_graph_scope
from .layers import channels_per_layer
from .stages import SCOPE_CHOICES, SCOPE_OPTIONS, check_scope, cifar_stages, lowest_chains, prune_stages
from .structured import STRUCTURED_OPTIONS, structured_result


@register_method("random_channels")
class RandomChannels(PruningMethod):
    structured = True
    changes_architecture = True
    ratio_kind = "channels"
    params = {**STRUCTURED_OPTIONS, **SCOPE_OPTIONS, "seed": 0}
    choices = SCOPE_CHOICES
    summary = "random filter removal (structured baseline)"

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        if uses_graph_scope(model):  # any other model: every coupled channel group of its dependency graph
            if opts["scope"] != "block":
                raise ScopeError(f"scope={opts['scope']} needs an option-A CIFAR ResNet; {type(model).__name__} is "
                                 "pruned on its dependency graph: use scope=block (the default)")
            return prune_graph(model, ratio, ctx, opts, random_scores(opts["seed"]))
        staged = check_scope(model, opts["scope"], self.name)
        layers = channel_scope(model, opts["skip_last"]) if opts["scope"] != "stage" else []
        before = channels_per_layer(model)
        gen = torch.Generator().manual_seed(opts["seed"])
        plan = {}
        for layer in layers:
            c = layer.conv.out_channels
            plan[layer.name] = sorted(torch.randperm(c, generator=gen)[: n_remove(c, ratio)].tolist())
        kept = remove_channels(model, plan, ctx.example_input, opts["skip_last"]) if layers else {}
        details = {}
        if staged:  # i.i.d. random channel scores: chains of one group have exchangeable sums
            scores = [torch.rand(s.width, generator=gen) for s in cifar_stages(model)]
            details["stages"] = prune_stages(model, ratio, ctx.example_input, lowest_chains(scores))
        return structured_result(model, layers, before, kept, **details)
