"""What the importance-criterion methods (`taylor`, `group_norm`, `bn_scale`, `hessian`, `fpgm`) share: channels
scored by one of Torch-Pruning's importance classes on a Torch-Pruning group, ranked per group or globally,
removed in one or several steps, every cut checked.

Groups: on a model outside the zoo, the dependency-graph groups of `graph.py` (grouped convs in blocks of the same
positions); on the zoo's ResNets / VGGs, the block scope of `channels.py` (a conv, its BN, the layer reading it:
the Torch-Pruning group of that conv's outputs) and, with `scope=stage|all` on option-A CIFAR ResNets, the stage
channels of `stages.py`, scored on a group assembled from each stage's coupled layers (producer convs and BNs,
consumer convs / the Linear: the tracer cannot see the zero-pad shortcut, so the stage is described by hand) and
removed as whole chains. A criterion scores a group's channels from all its layers (Torch-Pruning's `mean`
group reduction) and normalises the scores by their mean within the group (bn_scale: raw |gamma|, see there).

Ranking (`global`): false (default) removes round(C*ratio) channels of each group (of each block of positions,
for grouped convs); true ranks every channel of every scored group together and removes the lowest-scoring
round(N*ratio) of all N (one channel at least kept per group), Torch-Pruning's global pruning; with `scope=all` it
ranks the block-internal channels, the stage cut keeps its per-stage counts.
Steps (`iterative_steps` = T): step t removes what the channels' scores, recomputed on the model as it is then,
rank lowest, until a fraction ratio*t/T of the original channels is gone (Torch-Pruning's linear scheduler), with
`step_epochs` of fine-tuning between steps (0: scores only move with the cut). The stage cut is one step.
A group the criterion cannot score (bn_scale: no BatchNorm in it) is kept whole and listed in `unscored`; a model
with no scorable group is a one-line error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch_pruning as tp
from torch import Tensor, nn

from .base import PruneContext, PruneResult, PruningMethod
from .channels import ChannelLayer, ChannelPruner, channel_scope, lowest, n_remove
from .graph import GraphPruneError, GraphPruner, graph_details, uses_graph_scope
from .graph_trace import first_line
from .layers import channels_per_layer
from .stages import SCOPE_CHOICES, SCOPE_OPTIONS, Stage, check_scope, cifar_stages, lowest_chains, prune_stages
from .structured import STRUCTURED_OPTIONS, structured_result

CRITERION_OPTIONS: dict[str, Any] = {**STRUCTURED_OPTIONS, **SCOPE_OPTIONS, "global": False, "iterative_steps": 1,
                                     "step_epochs": 0.0}
CRITERION_MINIMUMS: dict[str, float] = {"iterative_steps": 1, "step_epochs": 0.0}


@dataclass
class Unit:
    """A channel group a criterion ranks: `full()` is the Torch-Pruning group of all its channels now, `chunks` its
    blocks of positions (grouped convs), `remove(idxs)` cuts root channels `idxs`, checked."""

    name: str
    chunks: int
    width: Callable[[], int]
    full: Callable[[], Any]

    @property
    def positions(self) -> int:
        return self.width() // self.chunks


def block_scores(scores: Tensor, chunks: int) -> Tensor:
    return scores.reshape(chunks, -1).mean(0)


def spread(positions: list[int], chunks: int, size: int) -> list[int]:
    return sorted(p + block * size for block in range(chunks) for p in positions)


def score_units(units: list[Unit], importance: tp.importance.Importance) -> dict[str, Tensor | None]:
    """Per unit, the criterion's channel scores (None: the criterion finds nothing to score in the group)."""
    scores: dict[str, Tensor | None] = {}
    for unit in units:
        try:
            value = importance(unit.full())
        except Exception as err:  # noqa: BLE001 - Torch-Pruning's own failure, one line naming the group
            raise GraphPruneError(f"cannot score the channels of {unit.name}: {first_line(err)}") from None
        scores[unit.name] = None if value is None else value.detach().float().cpu()
    return scores


def plan_layerwise(units: list[Unit], scores: dict[str, Tensor | None], start: dict[str, int],
                   ratio: float) -> dict[str, list[int]]:
    """Per scored unit, the root channels of its lowest positions beyond what `ratio` of its `start` positions
    leaves."""
    plan = {}
    for unit in units:
        if scores[unit.name] is None:
            continue
        keep = start[unit.name] - n_remove(start[unit.name], ratio)
        count = max(unit.positions - keep, 0)
        picked = lowest(block_scores(scores[unit.name], unit.chunks), count)
        plan[unit.name] = spread(picked, unit.chunks, unit.positions)
    return plan


def plan_global(units: list[Unit], scores: dict[str, Tensor | None], start: dict[str, int],
                ratio: float) -> dict[str, list[int]]:
    """The lowest-scoring positions over all scored units until round(N*ratio) of the N `start` channels are
    gone (a position of a grouped unit counts its blocks); every unit keeps one position."""
    scored = [u for u in units if scores[u.name] is not None]
    total = sum(start[u.name] * u.chunks for u in scored)
    need = round(total * ratio) - (total - sum(u.positions * u.chunks for u in scored))
    candidates = sorted((float(s), u.name, p) for u in scored
                        for p, s in enumerate(block_scores(scores[u.name], u.chunks)))
    chunks = {u.name: u.chunks for u in scored}
    room = {u.name: u.positions - 1 for u in scored}
    picked: dict[str, list[int]] = {u.name: [] for u in scored}
    for _, name, position in candidates:
        if need <= 0:
            break
        if room[name] > 0:
            picked[name].append(position)
            room[name] -= 1
            need -= chunks[name]
    sizes = {u.name: u.positions for u in scored}
    return {name: spread(sorted(p), chunks[name], sizes[name]) for name, p in picked.items() if p}


def stage_group(stage: Stage) -> tp.dependency.Group:
    """A Torch-Pruning group of every channel of an option-A stage, assembled from its coupled layers."""
    group = tp.dependency.Group()
    channels = list(range(stage.width))
    members = [(conv, tp.prune_conv_out_channels) for _, conv, _, _ in stage.producers]
    members += [(bn, tp.prune_batchnorm_out_channels) for *_, bn in stage.producers]
    members += [(m, tp.prune_conv_in_channels if isinstance(m, nn.Conv2d) else tp.prune_linear_in_channels)
                for _, m in stage.consumers]
    root = tp.dependency.Node(stage.producers[0][1], None)
    for module, handler in members:
        dep = tp.dependency.Dependency(None, handler, root, tp.dependency.Node(module, None))
        group.add_dep(dep, list(channels))
        group[len(group) - 1].root_idxs = list(channels)
    return group


class CriterionMethod(PruningMethod):
    """A channel method scoring with a Torch-Pruning importance class (subclasses: `importance`, maybe `prepare`)."""

    structured = True
    changes_architecture = True
    ratio_kind = "channels"
    params: ClassVar[dict[str, Any]] = CRITERION_OPTIONS
    choices: ClassVar[dict[str, tuple[str, ...]]] = SCOPE_CHOICES
    minimums: ClassVar[dict[str, float]] = CRITERION_MINIMUMS
    cannot_score: ClassVar[str] = "it finds no weights to score"

    def importance(self, opts: dict[str, Any]) -> tp.importance.Importance:
        raise NotImplementedError

    def prepare(self, model: nn.Module, ctx: PruneContext, opts: dict[str, Any]) -> None:
        """Whatever the criterion reads besides the weights (gradients), on the model as it is now."""

    def finish(self, model: nn.Module) -> None:
        model.zero_grad(set_to_none=True)

    def check_model(self, model: nn.Module, options: dict[str, Any]) -> None:
        self._check_options(model, options)

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        self._check_options(model, opts)
        try:
            if uses_graph_scope(model):
                return self._prune_graph(model, ratio, ctx, opts)
            return self._prune_zoo(model, ratio, ctx, opts)
        finally:
            self.finish(model)

    def _check_options(self, model: nn.Module, opts: dict[str, Any]) -> None:
        if uses_graph_scope(model):
            if opts["scope"] != "block":
                raise ValueError(f"{self.name}: scope={opts['scope']} needs an option-A CIFAR ResNet; "
                                 f"{type(model).__name__} is pruned on its dependency graph: use scope=block")
            return
        check_scope(model, opts["scope"], self.name)
        if opts["scope"] == "stage" and opts["global"]:
            raise ValueError(f"{self.name}: global=true ranks block-internal channels; scope=stage cuts fixed "
                             "per-stage counts: use global=false or scope=block|all")
        if opts["scope"] != "block" and opts["iterative_steps"] > 1:
            raise ValueError(f"{self.name}: iterative_steps={opts['iterative_steps']} needs scope=block (the stage "
                             f"cut is one step): use scope=block or iterative_steps=1")

    def _steps(self, model: nn.Module, units: list[Unit], ratio: float, ctx: PruneContext, opts: dict[str, Any],
               cut: Callable[[dict[str, list[int]]], None]) -> tuple[dict[str, list[int]], list[str], float]:
        """Score, plan and `cut` in `iterative_steps` steps; returns the removed channels per unit (numbered as at
        the start), the unscored units and the fine-tuning epochs spent."""
        start = {u.name: u.positions for u in units}
        alive = {u.name: list(range(u.width())) for u in units}
        steps, spent, unscored = opts["iterative_steps"], 0.0, []
        plan_fn = plan_global if opts["global"] else plan_layerwise
        importance = self.importance(opts)
        for step in range(1, steps + 1):
            self.prepare(model, ctx, opts)
            scores = score_units(units, importance)
            unscored = [name for name, s in scores.items() if s is None]
            if len(unscored) == len(units):
                raise ValueError(f"{self.name}: cannot score any channel group of {type(model).__name__}: "
                                 f"{self.cannot_score}")
            plan = plan_fn(units, scores, start, ratio * step / steps)
            cut(plan)
            for name, idxs in plan.items():
                gone = set(idxs)
                alive[name] = [c for j, c in enumerate(alive[name]) if j not in gone]
            if step < steps and opts["step_epochs"] > 0:
                ctx.finetune(model, opts["step_epochs"])
                spent += opts["step_epochs"]
        removed = {u.name: sorted(set(range(start[u.name] * u.chunks)) - set(alive[u.name])) for u in units}
        return removed, unscored, spent

    def _prune_graph(self, model: nn.Module, ratio: float, ctx: PruneContext, opts: dict[str, Any]) -> PruneResult:
        pruner = GraphPruner(model, ctx.example_input)
        groups = pruner.groups(opts["skip_last"])
        if not groups:
            raise GraphPruneError(f"{type(model).__name__}: the dependency graph has no prunable channel group "
                                  f"outside the classifier {pruner.output_layer}")
        before = {g.name: g.channels for g in groups}
        units = [Unit(g.name, g.chunks, lambda g=g: g.channels, lambda g=g: pruner.full(g)) for g in groups]
        removed, unscored, spent = self._steps(model, units, ratio, ctx, opts, lambda plan: pruner.cut(plan, groups))
        kept = {n: [c for c in range(before[n]) if c not in set(r)] for n, r in removed.items()}
        details = {**graph_details(pruner, groups, before, kept), **self._describe(opts, unscored)}
        return PruneResult(model=model, structured=True, details=details, finetuned_epochs=spent)

    def _prune_zoo(self, model: nn.Module, ratio: float, ctx: PruneContext, opts: dict[str, Any]) -> PruneResult:
        layers = channel_scope(model, opts["skip_last"]) if opts["scope"] != "stage" else []
        before = channels_per_layer(model)
        kept: dict[str, list[int]] = {}
        details: dict[str, Any] = {}
        spent, unscored = 0.0, []
        if layers:
            pruner = ChannelPruner(model, ctx.example_input)
            units = [_layer_unit(pruner, layer) for layer in layers]
            named = {layer.name: layer for layer in layers}

            def cut(plan: dict[str, list[int]]) -> None:
                for name, idxs in plan.items():
                    pruner.remove(named[name], idxs)
                pruner.check_forward()

            removed, unscored, spent = self._steps(model, units, ratio, ctx, opts, cut)
            kept = {n: [c for c in range(before[n]) if c not in set(r)] for n, r in removed.items()}
        if opts["scope"] in ("stage", "all"):
            details["stages"] = self._cut_stages(model, ratio, ctx, opts)
        return structured_result(model, layers, before, kept, finetuned_epochs=spent, **details,
                                 **self._describe(opts, unscored))

    def _cut_stages(self, model: nn.Module, ratio: float, ctx: PruneContext, opts: dict[str, Any]) -> dict:
        """The stage cut (`stages.py`), chains ranked by the criterion's scores summed over their stages."""
        self.prepare(model, ctx, opts)
        stages = cifar_stages(model)
        importance = self.importance(opts)
        scores = []
        for stage in stages:
            value = importance(stage_group(stage))
            if value is None:
                raise ValueError(f"{self.name}: cannot score the channels of {stage.name}: {self.cannot_score}")
            scores.append(value.detach().float().cpu())
        return prune_stages(model, ratio, ctx.example_input, lowest_chains(scores))

    def _describe(self, opts: dict[str, Any], unscored: list[str]) -> dict[str, Any]:
        return {"criterion": self.name, "ranking": "global" if opts["global"] else "per_group",
                "iterative_steps": opts["iterative_steps"], "unscored": unscored}


def _layer_unit(pruner: ChannelPruner, layer: ChannelLayer) -> Unit:
    def full():
        conv = layer.conv
        return pruner.graph.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(conv.out_channels)))

    return Unit(layer.name, 1, lambda: layer.conv.out_channels, full)

