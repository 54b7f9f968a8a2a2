"""Channel pruning of any CNN (torchvision builders, models logged by another tool) through Torch-Pruning's
DependencyGraph on the real module graph.

Scope (`graph`): every group of coupled channels the graph finds with a Conv2d or Linear as its root (a conv, its
BN, the depthwise conv and squeeze-excitation layers that follow, every layer reading the channels; residual adds
couple all the convs writing into them), except the groups that contain the classifier's outputs (the last
Conv2d / Linear a forward pass runs). `ratio` is the fraction of channels removed per group (round(C*r), one kept
at least), as for the zoo's block scope. The zoo's ResNets and VGGs keep their own scopes (`channels.py`,
`stages.py`): their option-A shortcut is invisible to the tracer.

Grouped convolutions (1 < groups < channels: ResNeXt, RegNet) are cut, not refused: a group whose channels a
grouped conv reads or writes is split into `chunks` equal blocks (the conv's groups; the largest when several) and
the same positions are removed from every block (Torch-Pruning's in/out channel groups), so every conv group keeps
the same width and reads the same channels; positions are ranked by their score averaged over the blocks.
Depthwise convs follow their producer (their inputs, outputs and groups shrink together). Groups are kept whole
(listed in `kept_whole` with the reason) when their channels pass through a channel shuffle or another reshape of
the channel axis (`graph_trace.py`), or reach a grouped conv mixed with other channels.

Every cut is verified:
- widths: only the layers the groups name change, each by the number of channels removed (depthwise convs also
  lose input channels and groups, a bare parameter such as ConvNeXt's `layer_scale` its channel dimension); the
  parameter count falls by exactly what those widths imply;
- function: in eval mode, the pruned model's outputs equal the unpruned model's with the removed channels zeroed
  at the input of every Conv2d / Linear reading them, i.e. the groups removed those channels everywhere and nothing
  else (not checkable for a group holding a LayerNorm, whose statistics span the channels: those are cut last);
- forward: batches of 1 and 2 give the original output shape.
`cut` makes all the cuts of a plan and checks them together; when that check fails, the cuts are replayed one
group at a time on a copy of the model, each checked, so the one-line error names the group that fails. Any
exception Torch-Pruning raises becomes such a line.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .base import PruneContext, PruneResult
from .channels import filter_l1, is_zoo_model, lowest, n_remove
from .graph_trace import GraphPruneError, build_graph, find_attention, first_line, regroup_site
from .graph_widths import Cut, count_params, expected_widths, is_depthwise, params_for_widths, widths

__all__ = ["GraphGroup", "GraphPruneError", "GraphPruner", "graph_channels", "l1_scores", "prune_graph",
           "random_scores", "uses_graph_scope", "widths"]
CROSS_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm)


def uses_graph_scope(model: nn.Module) -> bool:
    """Channel methods prune a model outside the zoo on its dependency graph."""
    return not is_zoo_model(model)


def _forward_order(model: nn.Module, example: Tensor) -> list[str]:
    """Names of the Conv2d / Linear layers in the order a forward pass runs them."""
    order: list[str] = []
    handles = [m.register_forward_hook(lambda *_, n=name: order.append(n))
               for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))


@dataclass
class GraphGroup:
    """A group of coupled channels, named by its root layer (a Conv2d or Linear whose outputs it removes).
    `chunks`: the blocks grouped convs split its channels into (1: none); cuts take the same positions in each."""

    name: str
    root: nn.Module
    members: list[str]  # every layer the group changes, root first
    chunks: int = 1

    @property
    def channels(self) -> int:
        return self.root.out_channels if isinstance(self.root, nn.Conv2d) else self.root.out_features

    @property
    def positions(self) -> int:
        """Channels per block: what a per-group ratio is applied to."""
        return self.channels // self.chunks

    def idxs(self, positions: list[int]) -> list[int]:
        """The channels of `positions` in every block."""
        return sorted(p + block * self.positions for block in range(self.chunks) for p in positions)

    def block_scores(self, scores: Tensor) -> Tensor:
        """Per position, the channel scores averaged over the blocks."""
        return scores.reshape(self.chunks, self.positions).mean(0)


class GraphPruner:
    """One DependencyGraph of `model`; `groups()` lists the prunable groups, `cut(plan)` / `remove(group, idxs)` cut
    and check."""

    def __init__(self, model: nn.Module, example_input: Tensor):
        self.model, self.example = model, example_input
        self.names = {m: n for n, m in model.named_modules()}
        self.kept_whole: dict[str, str] = {}
        self._full: dict[str, Any] = {}  # group name -> Torch-Pruning group of all its channels, until the next cut
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                self.out_shape = tuple(model(example_input).shape)
            self.order = _forward_order(model, example_input)
        except Exception as err:  # noqa: BLE001 - the model's own code: any failure is reported the same way
            shape = "x".join(str(d) for d in example_input.shape[1:])
            raise GraphPruneError(f"{type(model).__name__} does not run on an input of shape {shape}: "
                                  f"{first_line(err)}") from None
        finally:
            model.train(was_training)
        model.eval()
        try:
            attention = find_attention(model, example_input)
            if attention:
                raise GraphPruneError(f"{type(model).__name__} computes attention ({attention}): the graph scope cuts "
                                      "the channels of convolutional networks, not attention heads or token widths")
            self.graph = build_graph(model, example_input)
        finally:
            model.train(was_training)
        if not self.order:
            raise GraphPruneError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
        self.output_layer = self.order[-1]
        self.param_names = {p: n for n, p in model.named_parameters()}
        probe = torch.Generator().manual_seed(0)
        self.probe = torch.randn((2, *example_input.shape[1:]), generator=probe).to(example_input.device)

    # ------------------------------------------------------------------ groups

    def _cuts(self, tp_group) -> list[Cut]:
        cuts = []
        for item in tp_group.items:
            target = item.dep.target.module
            idxs, root_idxs = [int(i) for i in item.idxs], [int(i) for i in item.root_idxs]
            if isinstance(target, nn.Parameter):
                name = self.param_names.get(target, "?")
                cuts.append(Cut(name, target, True, idxs, root_idxs, dim=item.dep.target.pruning_dim))
                continue
            name = self.names.get(target) if isinstance(target, nn.Module) else None
            if name is None:
                continue  # Torch-Pruning's own nodes for functional ops (add, mul, reshape, ...): no parameters
            out = self.graph.is_out_channel_pruning_fn(item.dep.handler)
            cuts.append(Cut(name, target, out, idxs, root_idxs))
        return cuts

    def _tp_groups(self, output: nn.Module) -> list[tuple[str, Any]]:
        """(root name, Torch-Pruning group of all its channels) for every Conv2d / Linear root but `output`, as
        `DependencyGraph.get_all_groups` makes them; a root whose channels Torch-Pruning cannot follow (it raises)
        is kept whole with the reason."""
        found, visited = [], {output}
        for module in list(self.graph.module2node):
            if not isinstance(module, (nn.Conv2d, nn.Linear)) or module in visited:
                continue
            name = self.names.get(module, "?")
            try:
                pruner = self.graph.get_pruner_of_module(module)
                tp_group = self.graph.get_pruning_group(module, pruner.prune_out_channels,
                                                        list(range(pruner.get_out_channels(module))))
            except Exception as err:  # noqa: BLE001 - Torch-Pruning's own failure: this group stays whole
                self.kept_whole[name] = f"Torch-Pruning cannot follow its channels ({first_line(err)})"
                visited.add(module)
                continue
            outs = [item.dep.target.module for item in tp_group.items
                    if self.graph.is_out_channel_pruning_fn(item.dep.handler)]
            if output in outs:
                continue
            visited.update(outs)
            found.append((name, tp_group))
        return found

    def groups(self, skip_last: int = 0) -> list[GraphGroup]:
        """The prunable groups in forward order of their roots, without the classifier's (and the last `skip_last`)
        and without those kept whole (`kept_whole`: group name -> why)."""
        output = self.model.get_submodule(self.output_layer)
        rank = {name: i for i, name in enumerate(self.order)}
        found = []
        for _, tp_group in self._tp_groups(output):
            cuts = self._cuts(tp_group)
            writers = [c for c in cuts if c.out and c.name in rank]
            if not writers:
                continue
            first = min(writers, key=lambda c: rank[c.name])  # the group is named by its first writer
            members = [first.name, *dict.fromkeys(c.name for c in cuts if c.name != first.name)]
            group = GraphGroup(first.name, first.module, members)
            if tp_group.items[0].dep.target.module is first.module:
                self._full[group.name] = tp_group
            reason = self._why_whole(group, tp_group)
            if reason:
                self.kept_whole[group.name] = reason
            else:
                found.append(group)
        found.sort(key=lambda g: rank[g.name])
        return found[: len(found) - skip_last] if skip_last else found

    def _why_whole(self, group: GraphGroup, tp_group) -> str | None:
        """Why a group cannot be cut (it is then kept whole), else None; sets `group.chunks`."""
        sites = [site for item in tp_group.items if (site := regroup_site(item.dep.target))]
        if sites:
            return f"its channels pass through a channel shuffle / reshape of the channel axis in {min(sites)[1]}"
        chunks = 1
        for cut in self._cuts(self.full(group)):
            module = cut.module
            if not isinstance(module, nn.Conv2d) or module.groups == 1 or is_depthwise(module):
                continue
            width = module.out_channels if cut.out else module.in_channels
            if cut.idxs != cut.root_idxs or sorted(cut.idxs) != list(range(width)):
                return f"grouped conv {cut.name} (groups={module.groups}) reads them mixed with other channels"
            chunks = math.lcm(chunks, module.groups)
        if group.channels % chunks:
            return f"its {group.channels} channels do not split into the {chunks} groups of its grouped convs"
        group.chunks = chunks
        return None

    def _tp_group(self, group: GraphGroup, idxs: list[int]):
        try:
            pruner = self.graph.get_pruner_of_module(group.root)
            return self.graph.get_pruning_group(group.root, pruner.prune_out_channels, idxs)
        except Exception as err:  # noqa: BLE001
            raise GraphPruneError(f"Torch-Pruning cannot follow the channels of {group.name}: "
                                  f"{first_line(err)}") from None

    def full(self, group: GraphGroup):
        """Torch-Pruning's group of every channel of `group` (what importance criteria score)."""
        if group.name not in self._full:
            self._full[group.name] = self._tp_group(group, list(range(group.channels)))
        return self._full[group.name]

    def scores(self, group: GraphGroup, filter_score: Callable[[nn.Module], Tensor]) -> Tensor:
        """Per root channel: the sum over every Conv2d / Linear writing it of `filter_score` of its filter,
        each writer normalised by its mean (so a depthwise kernel counts as much as a 1x1 conv's filter)."""
        total = torch.zeros(group.channels)
        for cut in self._cuts(self.full(group)):
            if cut.out and isinstance(cut.module, (nn.Conv2d, nn.Linear)):
                score = filter_score(cut.module).detach().float().cpu()[cut.idxs]
                total[cut.root_idxs] += score / score.mean().clamp_min(1e-12)
        return total

    # ------------------------------------------------------------------ cutting

    def _checked_cuts(self, group: GraphGroup, idxs: list[int]) -> list[Cut]:
        """The cuts removing root channels `idxs` of `group` (read off its full group, as Torch-Pruning maps them),
        after the checks that need no cut."""
        if len(idxs) >= group.channels:
            raise GraphPruneError(f"{group.name}: cannot remove {len(idxs)} of its {group.channels} channels")
        wanted = set(idxs)
        cuts = []
        for cut in self._cuts(self.full(group)):
            keep = [(i, r) for i, r in zip(cut.idxs, cut.root_idxs, strict=True) if r in wanted]
            cuts.append(Cut(cut.name, cut.module, cut.out, [i for i, _ in keep], [r for _, r in keep], cut.dim))
        for cut in cuts:
            module = cut.module
            if isinstance(module, nn.Module) and not isinstance(module, (nn.Conv2d, nn.Linear, *_NORMS)) and \
                    any(True for _ in module.parameters(recurse=False)):
                raise GraphPruneError(f"the cut of {group.name} also changes {cut.name} ({type(module).__name__}), "
                                      "whose parameters the verification cannot follow")
            if len(set(cut.idxs)) >= _channels(cut):
                raise GraphPruneError(f"{group.name}: removing {len(idxs)} channels would empty {cut.name}")
        return cuts

    def _prune(self, group: GraphGroup, idxs: list[int]) -> None:
        self._full.clear()  # channel numbers of shared layers move with every cut
        tp_group = self._tp_group(group, idxs)
        try:
            tp_group.prune()
        except Exception as err:  # noqa: BLE001
            raise GraphPruneError(f"mis-prune at {group.name}: Torch-Pruning fails to cut it: "
                                  f"{first_line(err)}") from None

    def remove(self, group: GraphGroup, idxs: list[int]) -> int:
        """Remove root channels `idxs` of `group` everywhere the graph couples them, checked (widths, parameters,
        function, forward); returns the parameters removed. GraphPruneError (naming the layer) when a check fails."""
        idxs = sorted({int(i) for i in idxs})
        if not idxs:
            return 0
        cuts = self._checked_cuts(group, idxs)
        before, params = widths(self.model), count_params(self.model)
        expected = expected_widths(before, cuts)
        reference = None if _has_cross_channel_norm(cuts) else self._masked_reference(cuts)
        self._prune(group, idxs)
        self._check_widths(group.name, before, expected, params)
        self._check_function(group.name, reference)
        return params - count_params(self.model)

    def cut(self, plan: dict[str, list[int]], groups: list[GraphGroup]) -> None:
        """Remove `plan[name]` root channels of every named group, checked together. When the check fails, the
        cuts are replayed group by group on a copy of the unpruned model, each checked, so that the error names the
        group that fails (the combined error is raised if each cut passes alone)."""
        named = {g.name: g for g in groups}
        plan = {name: sorted({int(i) for i in idxs}) for name, idxs in plan.items() if idxs}
        snapshot = copy.deepcopy(self.model)
        try:
            self._cut_together([(named[n], idxs) for n, idxs in plan.items()])
        except GraphPruneError as combined:
            replay = GraphPruner(snapshot, self.example)
            replay_groups = {g.name: g for g in replay.groups()}
            for name, idxs in plan.items():
                replay.remove(replay_groups[name], idxs)
            raise combined from None

    def _cut_together(self, steps: list[tuple[GraphGroup, list[int]]]) -> None:
        before, params = widths(self.model), count_params(self.model)
        all_cuts, plain, normed = [], [], []
        for group, idxs in steps:
            cuts = self._checked_cuts(group, idxs)
            all_cuts += cuts
            (normed if _has_cross_channel_norm(cuts) else plain).append((group, idxs, cuts))
        expected = expected_widths(before, all_cuts)
        reference = self._masked_reference([c for *_, cuts in plain for c in cuts])
        for group, idxs, _ in plain:
            self._prune(group, idxs)
        where = ", ".join(g.name for g, *_ in plain[:3]) + (" ..." if len(plain) > 3 else "")
        self._check_function(where, reference)
        for group, idxs, _ in normed:
            self._prune(group, idxs)
        self._check_widths(where, before, expected, params)
        self._check_function(where, None)

    def _check_widths(self, where: str, before: dict, expected: dict, params: int) -> None:
        after, dropped = widths(self.model), params - count_params(self.model)
        want_drop = params - params_for_widths(self.model, expected)
        if after != expected or dropped != want_drop:
            changed = {n: (before.get(n), after.get(n)) for n in after if before.get(n) != after.get(n)}
            raise GraphPruneError(f"mis-prune at {where}: removed {dropped} params, expected {want_drop}; "
                                  f"changed layers: {changed}")

    @torch.no_grad()
    def _masked_reference(self, cuts: list[Cut]) -> Tensor:
        """The unpruned model's eval output on the probe batch with the removed channels zeroed at the input of
        every Conv2d / Linear reading them."""
        zeroed: dict[nn.Module, set[int]] = {}
        for cut in cuts:
            if not cut.out and isinstance(cut.module, (nn.Conv2d, nn.Linear)):
                zeroed.setdefault(cut.module, set()).update(cut.idxs)
        handles = [module.register_forward_pre_hook(_zero_inputs(sorted(idxs), -1 if isinstance(module, nn.Linear)
                                                                 else 1))
                   for module, idxs in zeroed.items()]
        try:
            return self._run(self.probe)
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def _run(self, batch: Tensor) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model(batch)
        finally:
            self.model.train(was_training)

    def _check_function(self, where: str, reference: Tensor | None) -> None:
        for batch in (self.probe[:1], self.probe):
            try:
                out = self._run(batch)
            except RuntimeError as err:
                raise GraphPruneError(f"mis-prune at {where}: the pruned model's forward fails: "
                                      f"{first_line(err)}") from None
            want = (batch.shape[0], *self.out_shape[1:])
            if tuple(out.shape) != want:
                raise GraphPruneError(f"mis-prune at {where}: the pruned model outputs {tuple(out.shape)}, "
                                      f"expected {want}")
        if reference is not None:
            diff = float((out - reference).abs().max())
            if diff > 1e-4 * max(1.0, float(reference.abs().max())):
                raise GraphPruneError(f"mis-prune at {where}: the pruned model does not compute the unpruned "
                                      f"one without those channels (max |difference| {diff:.3g})")


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)


def _channels(cut: Cut) -> int:
    """The width of the dimension `cut` removes channels from."""
    module = cut.module
    if isinstance(module, nn.Parameter):
        return module.shape[cut.dim]
    if isinstance(module, nn.Conv2d):
        return module.out_channels if cut.out else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if cut.out else module.in_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    return module.num_features


def _has_cross_channel_norm(cuts: list[Cut]) -> bool:
    return any(isinstance(c.module, CROSS_CHANNEL_NORMS) for c in cuts)


def _zero_inputs(idxs: list[int], dim: int):
    index = torch.tensor(idxs, dtype=torch.long)

    def hook(_module: nn.Module, args: tuple) -> tuple:
        x = args[0].clone()
        x.index_fill_(dim % x.dim(), index.to(x.device), 0.0)
        return (x, *args[1:])

    return hook


def graph_channels(model: nn.Module, example_input: Tensor, skip_last: int = 0) -> dict[str, int]:
    """Channels of every prunable group now (per block, for a group of grouped convs: what a ratio counts), by
    group name (what `rounds` count on a model outside the zoo)."""
    return {g.name: g.positions for g in GraphPruner(model, example_input).groups(skip_last)}


def random_scores(seed: int) -> Callable[[GraphPruner, GraphGroup], Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return lambda _pruner, group: torch.rand(group.channels, generator=gen)


def l1_scores(pruner: GraphPruner, group: GraphGroup) -> Tensor:
    """Li et al.'s filter L1 norm (a Linear's row L1 likewise), summed over the writers of a coupled channel."""
    return pruner.scores(group, filter_l1)


def lowest_positions(group: GraphGroup, scores: Tensor, ratio: float) -> list[int]:
    """The root channels of the n_remove(positions, ratio) lowest-scoring positions of `group` (block-averaged)."""
    return group.idxs(lowest(group.block_scores(scores), n_remove(group.positions, ratio)))


def graph_details(pruner: GraphPruner, groups: list[GraphGroup], before: dict[str, int],
                  kept: dict[str, list[int]]) -> dict[str, Any]:
    layers = {g.name: {"channels_before": before[g.name], "channels_after": g.channels,
                       "ratio": 1.0 - g.channels / before[g.name], "coupled": g.members[1:],
                       **({"channel_groups": g.chunks} if g.chunks > 1 else {})} for g in groups}
    return {"scope": "graph", "classifier": pruner.output_layer, "layers": layers, "kept_channels": kept,
            "kept_whole": dict(pruner.kept_whole)}


def prune_graph(
    model: nn.Module,
    ratio: float,
    ctx: PruneContext,
    opts: dict[str, Any],
    score: Callable[[GraphPruner, GraphGroup], Tensor],
    layer_epochs: float = 0.0,
) -> PruneResult:
    """Remove round(C*ratio) of the lowest-scoring channels of every group (see the module docstring); with
    `layer_epochs` > 0, fine-tune between groups and score each group on the model as it is then."""
    pruner = GraphPruner(model, ctx.example_input)
    groups = pruner.groups(opts.get("skip_last", 0))
    if not groups:
        raise GraphPruneError(f"{type(model).__name__}: the dependency graph has no prunable channel group outside "
                              f"the classifier {pruner.output_layer}"
                              + (f" (kept whole: {_first_reason(pruner)})" if pruner.kept_whole else ""))
    before = {g.name: g.channels for g in groups}
    spent = 0.0
    if layer_epochs <= 0:
        plan = {g.name: lowest_positions(g, score(pruner, g), ratio) for g in groups}
        pruner.cut(plan, groups)
    else:
        plan = {}
        for i, group in enumerate(groups):
            plan[group.name] = lowest_positions(group, score(pruner, group), ratio)
            pruner.remove(group, plan[group.name])
            if i + 1 < len(groups):
                ctx.finetune(model, layer_epochs)
                spent += layer_epochs
    kept = {name: [j for j in range(before[name]) if j not in set(idxs)] for name, idxs in plan.items()}
    details = graph_details(pruner, groups, before, kept)
    return PruneResult(model=model, structured=True, details=details, finetuned_epochs=spent)


def _first_reason(pruner: GraphPruner) -> str:
    name, reason = next(iter(pruner.kept_whole.items()))
    more = len(pruner.kept_whole) - 1
    return f"{name}: {reason}" + (f"; and {more} more" if more else "")
