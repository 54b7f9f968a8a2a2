"""Channel pruning of any CNN (torchvision builders, models logged by another tool) through Torch-Pruning's
DependencyGraph on the real module graph.

Scope (`graph`): every group of coupled channels the graph finds with a Conv2d or Linear as its root (a conv, its
BN, the depthwise conv and squeeze-excitation layers that follow, every layer reading the channels; residual adds
couple all the convs writing into them), except the groups that contain the classifier's outputs (the last
Conv2d / Linear a forward pass runs). `ratio` is the fraction of channels removed per group (round(C*r), one kept
at least), as for the zoo's block scope. The zoo's ResNets and VGGs keep their own scopes (`channels.py`,
`stages.py`): their option-A shortcut is invisible to the tracer.

Every cut is verified, as the zoo's are:
- widths: only the layers the group names change, each by the number of channels removed (depthwise convs also
  lose input channels and groups); the parameter count falls by exactly what those widths imply;
- function: in eval mode, the pruned model's outputs equal the unpruned model's with the removed channels zeroed
  at the input of every layer that mixes channels (a conv with groups=1, a Linear), i.e. the group removed those
  channels everywhere and nothing else (skipped when the group holds a LayerNorm / GroupNorm, whose statistics
  span the channels);
- forward: batches of 1 and 2 give the original output shape.
A cut that fails any check, or a group through a layer whose parameters the check cannot follow, stops with one
line naming the layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from .base import PruneContext, PruneResult
from .channels import ScopeError, filter_l1, is_zoo_model, lowest, n_remove

_BN = nn.modules.batchnorm._BatchNorm
WIDTH_TYPES = (nn.Conv2d, nn.Linear, _BN, nn.LayerNorm)
CROSS_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm)


class GraphPruneError(ScopeError):
    """A cut the dependency graph cannot make or that failed its verification (one line, names the layer)."""


def _shape(module: nn.Module) -> tuple:
    if isinstance(module, nn.Conv2d):
        return (module.in_channels, module.out_channels, module.groups)
    if isinstance(module, nn.Linear):
        return (module.in_features, module.out_features)
    if isinstance(module, _BN):
        return (module.num_features,)
    return tuple(module.normalized_shape)


def widths(model: nn.Module) -> dict[str, tuple]:
    """Channel widths of every Conv2d (in, out, groups), Linear (in, out), BatchNorm (features), LayerNorm (shape)."""
    return {name: _shape(m) for name, m in model.named_modules() if isinstance(m, WIDTH_TYPES)}


def _own_params(module: nn.Module, shape: tuple | None) -> int:
    """Parameters `module` holds itself (not its children) if its widths were `shape`."""
    if shape is None or not isinstance(module, WIDTH_TYPES):
        return sum(p.numel() for p in module.parameters(recurse=False))
    if isinstance(module, nn.Conv2d):
        c_in, c_out, groups = shape
        return c_in // groups * c_out * math.prod(module.kernel_size) + (c_out if module.bias is not None else 0)
    if isinstance(module, nn.Linear):
        f_in, f_out = shape
        return f_in * f_out + (f_out if module.bias is not None else 0)
    if isinstance(module, _BN):
        return 2 * shape[0] if module.affine else 0
    per = math.prod(shape)
    return (per if module.weight is not None else 0) + (per if module.bias is not None else 0)


def params_for_widths(model: nn.Module, shapes: dict[str, tuple]) -> int:
    """Parameter count of `model` with the layer widths `shapes` (other parameters as they are)."""
    return sum(_own_params(m, shapes.get(name)) for name, m in model.named_modules())


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
    """A group of coupled channels, named by its root layer (a Conv2d or Linear whose outputs it removes)."""

    name: str
    root: nn.Module
    members: list[str]  # every layer the group changes, root first

    @property
    def channels(self) -> int:
        return self.root.out_channels if isinstance(self.root, nn.Conv2d) else self.root.out_features


@dataclass
class _Item:
    name: str
    module: nn.Module
    out: bool  # an output-channel cut (else input channels)
    idxs: list[int]
    root_idxs: list[int]


class GraphPruner:
    """One DependencyGraph of `model`; `groups()` lists the prunable groups, `remove(group, idxs)` cuts and checks."""

    def __init__(self, model: nn.Module, example_input: Tensor):
        self.model, self.example = model, example_input
        self.names = {m: n for n, m in model.named_modules()}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                self.out_shape = tuple(model(example_input).shape)
            self.order = _forward_order(model, example_input)
            self.graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
        finally:
            model.train(was_training)
        if not self.order:
            raise GraphPruneError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
        self.output_layer = self.order[-1]
        probe = torch.Generator().manual_seed(0)
        self.probe = torch.randn((2, *example_input.shape[1:]), generator=probe).to(example_input.device)

    def _items(self, group) -> list[_Item]:
        items = []
        for item in group.items:
            module = item.dep.target.module
            name = self.names.get(module) if isinstance(module, nn.Module) else None
            if name is None:
                if isinstance(module, nn.Parameter):
                    raise GraphPruneError(f"the cut of {self._root_name(group)} also changes a bare parameter "
                                          f"of shape {tuple(module.shape)}, which the verification cannot follow")
                continue  # Torch-Pruning's own nodes for functional ops (add, mul, reshape, ...): no parameters
            out = self.graph.is_out_channel_pruning_fn(item.dep.handler)
            items.append(_Item(name, module, out, [int(i) for i in item.idxs], [int(i) for i in item.root_idxs]))
        return items

    def _root_name(self, group) -> str:
        return self.names.get(group.items[0].dep.target.module, "?")

    def groups(self, skip_last: int = 0) -> list[GraphGroup]:
        """The prunable groups in forward order of their roots, without the classifier's (and the last `skip_last`)."""
        output = self.model.get_submodule(self.output_layer)
        rank = {name: i for i, name in enumerate(self.order)}
        found = []
        for group in self.graph.get_all_groups(ignored_layers=[output], root_module_types=(nn.Conv2d, nn.Linear)):
            items = self._items(group)
            if any(i.module is output and i.out for i in items):
                continue
            writers = [i for i in items if i.out and i.name in rank]
            if not writers:
                continue
            first = min(writers, key=lambda i: rank[i.name])  # the group is named by its first writer
            members = [first.name, *dict.fromkeys(i.name for i in items if i.name != first.name)]
            found.append(GraphGroup(first.name, first.module, members))
        found.sort(key=lambda g: rank[g.name])
        return found[: len(found) - skip_last] if skip_last else found

    def _group(self, group: GraphGroup, idxs: list[int]):
        pruner = self.graph.get_pruner_of_module(group.root)
        return self.graph.get_pruning_group(group.root, pruner.prune_out_channels, idxs)

    def scores(self, group: GraphGroup, filter_score: Callable[[nn.Module], Tensor]) -> Tensor:
        """Per root channel: the sum over every Conv2d / Linear writing it of `filter_score` of its filter,
        each writer normalised by its mean (so a depthwise kernel counts as much as a 1x1 conv's filter)."""
        total = torch.zeros(group.channels)
        for item in self._items(self._group(group, list(range(group.channels)))):
            if item.out and isinstance(item.module, (nn.Conv2d, nn.Linear)):
                score = filter_score(item.module).detach().float().cpu()[item.idxs]
                total[item.root_idxs] += score / score.mean().clamp_min(1e-12)
        return total

    def remove(self, group: GraphGroup, idxs: list[int]) -> int:
        """Remove root channels `idxs` of `group` everywhere the graph couples them; returns the parameters removed.
        GraphPruneError (naming the layer) when a check fails."""
        idxs = sorted({int(i) for i in idxs})
        if not idxs:
            return 0
        if len(idxs) >= group.channels:
            raise GraphPruneError(f"{group.name}: cannot remove {len(idxs)} of its {group.channels} channels")
        tp_group = self._group(group, idxs)
        items = self._items(tp_group)
        self._check_followable(group, items)
        if not self.graph.check_pruning_group(tp_group):
            raise GraphPruneError(f"{group.name}: removing {len(idxs)} channels would empty a coupled layer")
        before, params = widths(self.model), _count(self.model)
        expected = _expected_widths(before, items)
        reference = None if self._has_cross_channel_norm(items) else self._masked_reference(items)
        tp_group.prune()
        after, dropped = widths(self.model), params - _count(self.model)
        want_drop = params - params_for_widths(self.model, expected)
        if after != expected or dropped != want_drop:
            changed = {n: (before.get(n), after.get(n)) for n in after if before.get(n) != after.get(n)}
            raise GraphPruneError(f"mis-prune at {group.name}: removed {dropped} params, expected {want_drop}; "
                                  f"changed layers: {changed}")
        self._check_function(group, reference)
        return dropped

    def _check_followable(self, group: GraphGroup, items: list[_Item]) -> None:
        for item in items:
            own = sum(p.numel() for p in item.module.parameters(recurse=False))
            if own and not isinstance(item.module, WIDTH_TYPES):
                raise GraphPruneError(f"the cut of {group.name} also changes {item.name} "
                                      f"({type(item.module).__name__}), whose parameters the verification cannot "
                                      "follow")

    @staticmethod
    def _has_cross_channel_norm(items: list[_Item]) -> bool:
        return any(isinstance(i.module, CROSS_CHANNEL_NORMS) for i in items)

    @torch.no_grad()
    def _masked_reference(self, items: list[_Item]) -> Tensor:
        """The unpruned model's eval output on the probe batch with the removed channels zeroed at the input of
        every channel-mixing reader."""
        handles = []
        for item in items:
            mixing = isinstance(item.module, nn.Linear) or (
                isinstance(item.module, nn.Conv2d) and item.module.groups == 1)
            if item.out or not mixing:
                continue
            dim = -1 if isinstance(item.module, nn.Linear) else 1
            handles.append(item.module.register_forward_pre_hook(_zero_inputs(item.idxs, dim)))
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

    def _check_function(self, group: GraphGroup, reference: Tensor | None) -> None:
        for batch in (self.probe[:1], self.probe):
            try:
                out = self._run(batch)
            except RuntimeError as err:
                raise GraphPruneError(f"mis-prune at {group.name}: the pruned model's forward fails: "
                                      f"{str(err).strip().splitlines()[0]}") from None
            want = (batch.shape[0], *self.out_shape[1:])
            if tuple(out.shape) != want:
                raise GraphPruneError(f"mis-prune at {group.name}: the pruned model outputs {tuple(out.shape)}, "
                                      f"expected {want}")
        if reference is not None:
            diff = float((out - reference).abs().max())
            if diff > 1e-4 * max(1.0, float(reference.abs().max())):
                raise GraphPruneError(f"mis-prune at {group.name}: the pruned model does not compute the unpruned "
                                      f"one without those channels (max |difference| {diff:.3g})")


def _zero_inputs(idxs: list[int], dim: int):
    index = torch.tensor(idxs, dtype=torch.long)

    def hook(_module: nn.Module, args: tuple) -> tuple:
        x = args[0].clone()
        x.index_fill_(dim % x.dim(), index.to(x.device), 0.0)
        return (x, *args[1:])

    return hook


def _expected_widths(before: dict[str, tuple], items: list[_Item]) -> dict[str, tuple]:
    """Widths after removing each item's channels (depthwise convs lose input channels and groups too)."""
    removed: dict[tuple[str, bool], set[int]] = {}
    modules = {}
    for item in items:
        depthwise = isinstance(item.module, nn.Conv2d) and item.module.groups == item.module.in_channels \
            == item.module.out_channels and item.module.groups > 1
        key = (item.name, True if depthwise else item.out)
        removed.setdefault(key, set()).update(item.idxs)
        modules[item.name] = item.module
    after = dict(before)
    for (name, out), idxs in removed.items():
        module, k = modules[name], len(idxs)
        if name not in after:
            continue
        shape = list(after[name])
        if isinstance(module, nn.Conv2d):
            if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
                shape = [shape[0] - k, shape[1] - k, shape[2] - k]
            elif out:
                shape[1] -= k
            else:
                shape[0] -= k
        elif isinstance(module, nn.Linear):
            shape[1 if out else 0] -= k
        else:  # BatchNorm features, LayerNorm's last dimension
            shape[-1] -= k
        after[name] = tuple(shape)
    return after


def graph_channels(model: nn.Module, example_input: Tensor, skip_last: int = 0) -> dict[str, int]:
    """Channels of every prunable group now, by group name (what `rounds` count on a model outside the zoo)."""
    return {g.name: g.channels for g in GraphPruner(model, example_input).groups(skip_last)}


def random_scores(seed: int) -> Callable[[GraphPruner, GraphGroup], Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return lambda _pruner, group: torch.rand(group.channels, generator=gen)


def l1_scores(pruner: GraphPruner, group: GraphGroup) -> Tensor:
    """Li et al.'s filter L1 norm (a Linear's row L1 likewise), summed over the writers of a coupled channel."""
    return pruner.scores(group, filter_l1)


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
                              f"the classifier {pruner.output_layer}")
    oneshot = layer_epochs <= 0
    planned = {g.name: score(pruner, g) for g in groups} if oneshot else {}
    layers, kept, spent = {}, {}, 0.0
    for i, group in enumerate(groups):
        c = group.channels
        scores = planned[group.name] if oneshot else score(pruner, group)
        idxs = lowest(scores, n_remove(c, ratio))
        pruner.remove(group, idxs)
        kept[group.name] = [j for j in range(c) if j not in set(idxs)]
        layers[group.name] = {"channels_before": c, "channels_after": group.channels,
                              "ratio": 1.0 - group.channels / c, "coupled": group.members[1:]}
        if not oneshot and i + 1 < len(groups):
            ctx.finetune(model, layer_epochs)
            spent += layer_epochs
    details = {"scope": "graph", "classifier": pruner.output_layer, "layers": layers, "kept_channels": kept}
    return PruneResult(model=model, structured=True, details=details, finetuned_epochs=spent)
