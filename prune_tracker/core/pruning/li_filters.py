"""`li_filters`: L1-norm filter pruning (Li et al. 2017, "Pruning Filters for Efficient ConvNets").

Why: the reference *structured* method: filters with the smallest sum |w| are removed with their feature
maps, BN entries and the next layer's input kernels (Sec. 3.1), so the result is a smaller dense network
that runs faster on any hardware, not just a sparse one.

Scope (`scope` option): `block` (default): see `channels.py` (block-internal conv1 on ResNets, Sec. 4.2;
every VGG conv but the last `skip_last`); `stage` (option-A CIFAR ResNets only): the block outputs of every
stage, chains of coupled channels ranked by the summed L1 norms of every filter writing them (see
`stages.py`); `all`: block-internal, then stage. `per_layer=sensitivity` allocates the block-internal
ratios only (the stage cut then uses `ratio` uniformly; scope=stage refuses it).
Ratio: fraction of filters removed per pruned layer (`per_layer=uniform`), or the
parameter-weighted mean over the pruned layers (`per_layer=sensitivity`: per-layer ratios from a sensitivity
scan, Sec. 3.2; see `sensitivity.py`; table in details, plot in figures).
`schedule`: `oneshot` ranks all layers on the original weights ("independent", Sec. 3.3) and prunes at
once, as Li et al. do (Sec. 4); `layerwise` prunes one layer at a time, re-ranking after
`ctx.finetune(model, layer_epochs)` between layers.
Every block-internal cut goes through Torch-Pruning's DependencyGraph, the stage cut is done by hand; both
are checked (widths, parameter count, forward).
Any other model (a torchvision builder, a model logged by another tool) is cut on its own dependency graph: every
coupled channel group but the classifier's, ranked by the filter L1 norms of the layers writing the channels,
each cut checked (widths, parameter count, function, forward); see `graph.py`. `per_layer=uniform` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from .base import PruneContext, PruneResult, PruningMethod, register_method
from .channels import (
    ChannelLayer,
    ChannelPruner,
    ScopeError,
    channel_params,
    channel_scope,
    filter_l1,
    lowest,
    n_remove,
)
from .graph import l1_scores, prune_graph, uses_graph_scope
from .layers import channels_per_layer
from .sensitivity import allocate, sensitivity_figure, sensitivity_scan
from .stages import SCOPE_CHOICES, SCOPE_OPTIONS, check_scope, prune_stages_l1
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
    score_layers: Callable[[list[ChannelLayer]], dict[str, Tensor]] | None = None,
) -> tuple[dict[str, list[int]], float]:
    """Remove the lowest-scoring filters layer by layer (default score: L1 norm; `score_layers` maps
    layers to per-filter scores on the model as it is now); returns kept indices and fine-tuning epochs
    spent."""
    if score_layers is None:
        score_layers = lambda lays: {lay.name: filter_l1(lay.conv) for lay in lays}  # noqa: E731
    pruner = ChannelPruner(model, ctx.example_input)
    oneshot = opts.get("schedule", "oneshot") == "oneshot"
    scores = score_layers(layers) if oneshot else {}
    kept, spent = {}, 0.0
    for i, layer in enumerate(layers):
        score = scores[layer.name] if oneshot else score_layers([layer])[layer.name]
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
        **SCOPE_OPTIONS,
        "per_layer": "uniform",
        "schedule": "oneshot",
        "layer_epochs": 0.1,
        "sensitivity_ratios": (0.2, 0.4, 0.6, 0.8, 0.9),
    }
    choices = {"per_layer": ("uniform", "sensitivity"), "schedule": ("oneshot", "layerwise"), **SCOPE_CHOICES}
    summary = "L1-norm filter pruning, channels removed (Li et al. 2017)"

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        if uses_graph_scope(model):
            return self._prune_graph(model, ratio, ctx, opts)
        staged = check_scope(model, opts["scope"], self.name)
        if opts["scope"] == "stage" and opts["per_layer"] == "sensitivity":
            raise ValueError("li_filters: per_layer=sensitivity allocates block-internal ratios: use scope=block|all")
        layers = channel_scope(model, opts["skip_last"]) if opts["scope"] != "stage" else []
        before = channels_per_layer(model)
        kept: dict[str, list[int]] = {}
        details: dict[str, Any] = {}
        figures: dict[str, Any] = {}
        spent = 0.0
        if layers:
            ratios, details, figures = layer_ratios(model, layers, ratio, ctx, opts)
            kept, spent = prune_filters(model, layers, ratios, ctx, opts)
        if staged:
            details["stages"] = prune_stages_l1(model, ratio, ctx.example_input)
        result = structured_result(model, layers, before, kept, finetuned_epochs=spent, **details)
        result.figures.update(figures)
        return result

    @staticmethod
    def _prune_graph(model: nn.Module, ratio: float, ctx: PruneContext, opts: dict[str, Any]) -> PruneResult:
        """A model outside the zoo: every coupled channel group of its dependency graph (`graph.py`)."""
        if opts["scope"] != "block":
            raise ScopeError(f"scope={opts['scope']} needs an option-A CIFAR ResNet; {type(model).__name__} is "
                             "pruned on its dependency graph: use scope=block (the default)")
        if opts["per_layer"] != "uniform":
            raise ScopeError(f"per_layer={opts['per_layer']} allocates the zoo's block ratios; "
                             f"{type(model).__name__} is pruned on its dependency graph: use per_layer=uniform")
        epochs = opts["layer_epochs"] if opts["schedule"] == "layerwise" else 0.0
        return prune_graph(model, ratio, ctx, opts, l1_scores, layer_epochs=epochs)
