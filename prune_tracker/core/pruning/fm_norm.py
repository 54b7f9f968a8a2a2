"""`fm_norm`: filters ranked by the mean Lp norm of their output feature maps on calibration images.

Why: the data-driven reading of "thin the layer by what its output does" that courses give of ThiNet: a
filter whose feature map is (almost) always small contributes little downstream, whatever its weights.
How it differs from `thinet`: fm_norm scores each channel alone by the size of its own activation, never
looks at the next layer's weights, and changes no surviving weight. ThiNet (Luo et al. 2017) instead
samples the *next* layer's output, greedily removes the channel subset whose summed contributions to it
are smallest (a channel with a large map that the next layer barely reads, or whose contribution cancels
another's, can go first), and then refits the next layer's kernels by least squares. fm_norm is cheaper
and needs no solve; ThiNet targets the reconstruction error directly.

Score of channel c: mean over `samples` calibration images (`ctx.calibration_batches`) of ||F[n, c]||_p
(`p`, default 1, over the spatial positions), where F is the feature map as the next layer reads it:
after BN and ReLU (and any pooling in between; VGG's last conv: the classifier's input, one value per
position). Lowest scores are removed, with the same machinery as `li_filters` (one-shot, uniform ratio,
DependencyGraph cuts checked). `scope`: block | stage | all (`stages.py`); for the stage cut the score of
a stage channel is summed over every block output of the stage (and the stem output for stage 1), and a
chain of coupled channels over its stages.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from .base import PruneContext, PruneResult, PruningMethod, register_method
from .channels import ChannelLayer, channel_scope
from .layers import channels_per_layer
from .li_filters import prune_filters
from .stages import SCOPE_CHOICES, SCOPE_OPTIONS, check_scope, cifar_stages, lowest_chains, prune_stages
from .structured import STRUCTURED_OPTIONS, structured_result


class _Done(Exception):
    pass


def _map_norms(fmap: Tensor, channels: int, p: float) -> Tensor:
    """(N, C) Lp norms over the spatial positions; a flat (N, C*S) Linear input is read as (N, C, S)."""
    fmap = fmap.detach().float().reshape(fmap.shape[0], channels, -1)
    return torch.linalg.vector_norm(fmap, ord=p, dim=2)


@torch.no_grad()
def feature_map_norms(
    model: nn.Module, taps: dict[str, tuple[nn.Module, str, int]], ctx: PruneContext, samples: int, p: float
) -> dict[str, Tensor]:
    """Mean Lp norm per channel of tapped tensors over the first `samples` calibration images: taps maps a
    key to (module, "in" = its input | "out" = its output, channel count). One forward pass per batch,
    stopped after the last tap fires. ValueError when the calibration batches hold no image."""
    sums = {key: torch.zeros(c, dtype=torch.float64) for key, (_, _, c) in taps.items()}
    pending: set[str] = set()

    def hook_for(key: str, channels: int):
        def record(fmap: Tensor) -> None:
            sums[key] += _map_norms(fmap, channels, p).sum(0).double().cpu()
            pending.discard(key)
            if not pending:
                raise _Done

        return record

    handles = []
    for key, (module, where, channels) in taps.items():
        record = hook_for(key, channels)
        if where == "in":
            handles.append(module.register_forward_pre_hook(lambda _m, args, r=record: r(args[0])))
        else:
            handles.append(module.register_forward_hook(lambda _m, _a, out, r=record: r(out)))
    was_training = model.training
    model.eval()
    count = 0
    try:
        for images, _ in ctx.calibration_batches():
            images = images[: samples - count]
            if len(images) == 0:
                continue
            pending.update(taps)
            with contextlib.suppress(_Done):
                model(images.to(ctx.device))
            if pending:
                raise ValueError(f"fm_norm: {sorted(pending)[0]} never ran in the model's forward pass")
            count += len(images)
            if count >= samples:
                break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("fm_norm: calibration_batches yielded no images; feature-map norms need calibration data")
    return {key: (s / count).float() for key, s in sums.items()}


def layer_scores(model: nn.Module, layers: list[ChannelLayer], ctx: PruneContext,
                 opts: dict[str, Any]) -> dict[str, Tensor]:
    """Block scope: per filter of each layer, the mean Lp norm of the map its consumer reads."""
    taps = {lay.name: (lay.consumer, "in", lay.conv.out_channels) for lay in layers}
    return feature_map_norms(model, taps, ctx, opts["samples"], opts["p"])


def stage_scores(model: nn.Module, ctx: PruneContext, opts: dict[str, Any]) -> list[Tensor]:
    """Stage scope: per stage channel, the mean Lp norms summed over the stage's block outputs."""
    stages = cifar_stages(model)
    taps = {f"{s.name}:{name}": (module, where, s.width) for s in stages for name, module, where in s.tensors}
    norms = feature_map_norms(model, taps, ctx, opts["samples"], opts["p"])
    return [sum(norms[f"{s.name}:{name}"] for name, _, _ in s.tensors) for s in stages]


@register_method("fm_norm")
class FeatureMapNorm(PruningMethod):
    structured = True
    changes_architecture = True
    ratio_kind = "channels"
    params = {**STRUCTURED_OPTIONS, **SCOPE_OPTIONS, "p": 1.0, "samples": 256}
    choices = SCOPE_CHOICES
    summary = "filters with the smallest mean Lp feature-map norm on calibration images removed"

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        if opts["samples"] < 1:
            raise ValueError(f"fm_norm: samples must be >= 1, got {opts['samples']}")
        if not opts["p"] > 0:
            raise ValueError(f"fm_norm: p must be > 0, got {opts['p']}")
        staged = check_scope(model, opts["scope"], self.name)
        layers = channel_scope(model, opts["skip_last"]) if opts["scope"] != "stage" else []
        before = channels_per_layer(model)
        kept: dict[str, list[int]] = {}
        scores: dict[str, Tensor] = {}
        details: dict[str, Any] = {}
        if layers and ratio > 0:
            scores = layer_scores(model, layers, ctx, opts)
            kept, _ = prune_filters(model, layers, {lay.name: ratio for lay in layers}, ctx,
                                    {"schedule": "oneshot"}, lambda _lays: scores)
        if staged and ratio > 0:
            node_scores = stage_scores(model, ctx, opts)
            details["stages"] = prune_stages(model, ratio, ctx.example_input, lowest_chains(node_scores))
            names = [s.name for s in cifar_stages(model)]
            details["stage_scores"] = {n: v.tolist() for n, v in zip(names, node_scores, strict=True)}
        details["scores"] = {name: v.tolist() for name, v in scores.items()}
        return structured_result(model, layers, before, kept, **details)
