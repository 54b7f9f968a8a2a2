"""`hybrid`: remove channels first, then LAMP unstructured on what is left (own method).

Why: at high compression a purely structured cut must thin every layer drastically (accuracy falls off a
cliff), while a purely unstructured one gives no dense speed-up. Spending part of the parameter budget on
whole filters (cheap, lowest-L1, Li et al. 2017) and the rest on LAMP-scored weights (Lee et al. 2021)
keeps a smaller dense network *and* reaches the footprint target; Distiller's AGP hybrid schedule on
ResNet-20 (filters + fine-grained) is the precedent.

Ratio: the target *parameter reduction of the whole original model* (non-zero parameters, all layers incl.
BN and classifier), unlike the other methods. `channel_fraction` of it is reached by uniform L1 filter
removal (channel ratio found by bisection on the parameter count; same scope as `li_filters`), the rest by
LAMP masks over the remaining prunable weights. Returns a channel-pruned model WITH masks attached.
`scope` (block | stage | all, as `li_filters`; see `stages.py`) picks which channels the filter part cuts:
the bisection counts the parameters of that scope's cut, the stage cut ranks coupled chains by summed L1.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import PruneContext, PruneResult, PruningMethod, register_method
from .channels import (
    channel_ratio_for_param_reduction,
    channel_scope,
    filter_l1,
    plan_lowest,
    remove_channels,
)
from .common import LAYER_OPTIONS, n_weights, target_layers, unstructured_result
from .lamp import lamp_masks
from .layers import channels_per_layer
from .masks import apply_masks, count_nonzero_params
from .stages import SCOPE_CHOICES, SCOPE_OPTIONS, check_scope, prune_stages_l1
from .structured import STRUCTURED_OPTIONS


@register_method("hybrid")
class Hybrid(PruningMethod):
    structured = False
    changes_architecture = True
    ratio_kind = "params"
    params = {**LAYER_OPTIONS, **STRUCTURED_OPTIONS, **SCOPE_OPTIONS, "channel_fraction": 0.5}
    choices = SCOPE_CHOICES
    summary = "L1 filter removal for part of the budget, then LAMP unstructured (own hybrid)"

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        if not 0 <= opts["channel_fraction"] <= 1:
            raise ValueError(f"hybrid: channel_fraction must be in [0, 1], got {opts['channel_fraction']}")
        staged = check_scope(model, opts["scope"], self.name)
        total = sum(p.numel() for p in model.parameters())
        channel_ratio, reached = 0.0, 0.0
        kept: dict[str, list[int]] = {}
        stage_cut: dict[str, Any] = {}
        if opts["channel_fraction"] * ratio > 0:
            channel_ratio, reached = channel_ratio_for_param_reduction(
                model, opts["channel_fraction"] * ratio, opts["skip_last"], scope=opts["scope"]
            )
            if opts["scope"] != "stage":
                layers = channel_scope(model, opts["skip_last"])
                plan = plan_lowest(
                    layers,
                    {lay.name: channel_ratio for lay in layers},
                    {lay.name: filter_l1(lay.conv) for lay in layers},
                )
                kept = remove_channels(model, plan, ctx.example_input, opts["skip_last"])
            if staged:
                stage_cut = prune_stages_l1(model, channel_ratio, ctx.example_input)
        layers = target_layers(model, opts)
        left = sum(p.numel() for p in model.parameters())
        n_prune = int(round(ratio * total)) - (total - left)
        if n_prune > n_weights(layers) - len(layers):
            raise ValueError(
                f"hybrid: ratio {ratio} unreachable: needs {n_prune} zeros among "
                f"{n_weights(layers)} prunable weights left after channel removal"
            )
        n_prune = max(n_prune, 0)
        if n_prune > 0:
            apply_masks(layers, lamp_masks(layers, n_prune))
        return unstructured_result(
            model,
            opts,
            channel_ratio=channel_ratio,
            channel_param_reduction=reached,
            kept_channels=kept,
            stages=stage_cut,
            channels=channels_per_layer(model),
            param_reduction=1 - (left - n_prune) / total,
            nonzero_param_reduction=1 - count_nonzero_params(model) / total,
        )
