"""`li_filters`: L1-norm filter pruning (Li et al. 2017, "Pruning Filters for Efficient ConvNets").

Why: the reference *structured* method: filters with the smallest sum |w| are removed with their feature
maps, BN entries and the next layer's input kernels (Sec. 3.1), so the result is a smaller dense network
that runs faster on any hardware, not just a sparse one.

Scope: see `channels.py` (block-internal conv1 on ResNets, Sec. 4.2; every VGG conv but the last
`skip_last`). Ratio: fraction of filters removed per pruned layer (`per_layer=uniform`), or the
parameter-weighted mean over the pruned layers (`per_layer=sensitivity`: per-layer ratios from a sensitivity
scan, Sec. 3.2; see `sensitivity.py`; table in details, plot in figures).
`schedule`: `oneshot` ranks all layers on the original weights ("independent", Sec. 3.3) and prunes at
once, as Li et al. do (Sec. 4); `layerwise` prunes one layer at a time, re-ranking after
`ctx.finetune(model, layer_epochs)` between layers.
Every cut goes through Torch-Pruning's DependencyGraph and is checked (widths, parameter count, forward).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import PruneContext, PruneResult, PruningMethod, register_method
from .channels import (
    ChannelLayer,
    ChannelPruner,
    channel_params,
    channel_scope,
    filter_l1,
    lowest,
    n_remove,
)
from .layers import channels_per_layer
from .sensitivity import allocate, sensitivity_figure, sensitivity_scan
from .structured import STRUCTURED_OPTIONS, structured_result


def layer_ratios(
    model: nn.Module, layers: list[ChannelLayer], ratio: float, ctx: PruneContext, opts: dict[str, Any]
) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """Per-layer removal ratios, plus details and figures of the sensitivity analysis if used."""
    if opts["per_layer"] == "uniform" or ratio == 0:
        return {layer.name: ratio for layer in layers}, {}, {}
    scores = {layer.name: filter_l1(layer.conv) for layer in layers}
    was_training = model.training
    model.eval()
    base, table = sensitivity_scan(model, layers, opts["sensitivity_ratios"], scores, ctx.evaluate, ctx.log)
    model.train(was_training)
    channels = {layer.name: layer.conv.out_channels for layer in layers}
    costs = {layer.name: float(channel_params(layer)) for layer in layers}
    ratios = allocate(base, table, channels, ratio, costs)
    details = {
        "sensitivity": {
            "baseline_accuracy": base,
            "table": {n: {str(r): a for r, a in row.items()} for n, row in table.items()},
            "chosen_ratios": ratios,
        }
    }
    return ratios, details, {"sensitivity": sensitivity_figure(base, table, ratios)}


def prune_filters(
    model: nn.Module,
    layers: list[ChannelLayer],
    ratios: dict[str, float],
    ctx: PruneContext,
    opts: dict[str, Any],
) -> tuple[dict[str, list[int]], float]:
    """Remove the lowest-L1 filters layer by layer; returns kept indices and fine-tuning epochs spent."""
    pruner = ChannelPruner(model, ctx.example_input)
    oneshot = opts["schedule"] == "oneshot"
    scores = {layer.name: filter_l1(layer.conv) for layer in layers} if oneshot else {}
    kept, spent = {}, 0.0
    for i, layer in enumerate(layers):
        score = scores[layer.name] if oneshot else filter_l1(layer.conv)
        c = layer.conv.out_channels
        idxs = lowest(score, n_remove(c, ratios[layer.name]))
        kept[layer.name] = [j for j in range(c) if j not in set(idxs)]
        pruner.remove(layer, idxs)
        if not oneshot and opts["layer_epochs"] > 0 and i + 1 < len(layers):
            pruner.check_forward()
            ctx.finetune(model, opts["layer_epochs"])
            spent += opts["layer_epochs"]
    pruner.check_forward()
    return kept, spent


@register_method("li_filters")
class LiFilters(PruningMethod):
    structured = True
    changes_architecture = True
    ratio_kind = "channels"
    params = {
        **STRUCTURED_OPTIONS,
        "per_layer": "uniform",
        "schedule": "oneshot",
        "layer_epochs": 0.1,
        "sensitivity_ratios": (0.2, 0.4, 0.6, 0.8, 0.9),
    }
    choices = {"per_layer": ("uniform", "sensitivity"), "schedule": ("oneshot", "layerwise")}
    summary = "L1-norm filter pruning, channels removed (Li et al. 2017)"

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        layers = channel_scope(model, opts["skip_last"])
        before = channels_per_layer(model)
        ratios, details, figures = layer_ratios(model, layers, ratio, ctx, opts)
        kept, spent = prune_filters(model, layers, ratios, ctx, opts)
        result = structured_result(model, layers, before, kept, finetuned_epochs=spent, **details)
        result.figures.update(figures)
        return result
