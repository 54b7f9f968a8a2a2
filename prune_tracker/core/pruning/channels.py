"""Channel removal through Torch-Pruning's DependencyGraph, with the scope every structured method shares
and a check that each cut removed exactly what was meant.

Scope (Li et al. 2017 Sec. 4.2):
- ResNets (any block with conv1/bn1/conv2/shortcut): only the FIRST conv of each basic block: its out
  channels, its BN and the block's conv2 in-channels (scope=block; stages.py cuts block outputs). On option-A
  CIFAR ResNets the zero-padding shortcut is invisible to the tracer (MagnitudePruner silently breaks the model);
  on ResNet-18 (projection shortcuts) the same block-internal scope is used for consistency.
- VGG (`features` Sequential): every conv except the last `skip_last` ones; the conv feeding the classifier
  trims Linear-1's inputs through the graph (Li et al. Sec. 4.1).
These scopes are the zoo's (`is_zoo_model`); any other model is cut on its own dependency graph (`graph.py`).
Block outputs, stem and classifier outputs stay, so `build_from_spec(architecture_spec(...))` rebuilds
every result. This is the methods' `scope=block` (the default). On option-A CIFAR ResNets, `scope=stage`
cuts the block outputs of each stage by hand (`stages.py`), `scope=all` does both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn


@dataclass
class ChannelLayer:
    """A conv whose output channels may be removed, the BN after it, and the layer that reads them."""

    name: str
    conv: nn.Conv2d
    bn_name: str
    consumer_name: str
    consumer: nn.Module  # Conv2d or Linear


def _is_block(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("conv1", "bn1", "conv2", "shortcut"))


def _vgg_scope(model: nn.Module, skip_last: int) -> list[ChannelLayer]:
    feats = list(model.features.named_children())
    convs = [(i, name, m) for i, (name, m) in enumerate(feats) if isinstance(m, nn.Conv2d)]
    first_linear = next(
        ((n, m) for n, m in model.classifier.named_children() if isinstance(m, nn.Linear)), None
    )
    layers = []
    for j, (i, name, conv) in enumerate(convs[: len(convs) - skip_last]):
        bn_name = f"features.{feats[i + 1][0]}"
        if j + 1 < len(convs):
            cname, consumer = f"features.{convs[j + 1][1]}", convs[j + 1][2]
        else:
            cname, consumer = f"classifier.{first_linear[0]}", first_linear[1]
        layers.append(ChannelLayer(f"features.{name}", conv, bn_name, cname, consumer))
    return layers


ZOO_PACKAGE = __name__.rsplit(".", 2)[0] + ".models."  # prune_tracker.core.models.


def is_zoo_model(model: nn.Module) -> bool:
    """A model of prune-tracker's own zoo (CIFAR ResNets, VGG, ResNet-18): the scopes here apply to it. Any other
    model (torchvision, another tool's) is pruned on its dependency graph (`graph.py`)."""
    module = type(model).__module__
    return module.startswith(ZOO_PACKAGE) and not module.endswith("torchvision_zoo")


class ScopeError(ValueError):
    """A channel method without a dependency-graph scope was given a model outside the zoo (one line)."""


def _first_conv(model: nn.Module) -> str:
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), "<no Conv2d>")


def channel_scope(model: nn.Module, skip_last: int = 0) -> list[ChannelLayer]:
    """The layers structured methods prune, in forward order (see module docstring)."""
    if not is_zoo_model(model):  # a torchvision MobileNet also has `features` + `classifier`: not a VGG
        raise ScopeError(
            f"cannot prune {_first_conv(model)} of {type(model).__name__}: this method knows only the channel scopes "
            "of the zoo's ResNets and VGGs (a conv, its BN and the conv reading it); li_filters and random_channels "
            "prune any graph through Torch-Pruning's dependency graph"
        )
    blocks = [(n, m) for n, m in model.named_modules() if _is_block(m)]
    if blocks:
        return [ChannelLayer(f"{n}.conv1", b.conv1, f"{n}.bn1", f"{n}.conv2", b.conv2) for n, b in blocks]
    if isinstance(getattr(model, "features", None), nn.Sequential) and hasattr(model, "classifier"):
        return _vgg_scope(model, skip_last)
    raise ValueError(
        f"no channel-pruning scope known for {type(model).__name__} "
        "(supported: ResNets with basic blocks, VGG with features/classifier)"
    )


def n_remove(channels: int, ratio: float) -> int:
    """Channels to remove at `ratio`: round(C*r), at least one channel kept."""
    return min(int(round(channels * ratio)), channels - 1)


def filter_l1(conv: nn.Conv2d) -> Tensor:
    """Sum of |w| per output filter (Li et al. 2017 Sec. 3.1)."""
    return conv.weight.detach().abs().flatten(1).sum(1)


def lowest(scores: Tensor, k: int) -> list[int]:
    """Indices of the k smallest scores, ascending index order."""
    return sorted(torch.argsort(scores)[:k].tolist()) if k > 0 else []


def layer_widths(model: nn.Module) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = (m.in_features, m.out_features)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out[name] = (m.num_features,)
    return out


def channel_params(layer: ChannelLayer) -> int:
    """Parameters one output channel of `layer` carries now: its filter (+bias), BN pair, consumer slice."""
    return _expected_drop(layer, 1)


def _expected_drop(layer: ChannelLayer, k: int) -> int:
    conv, consumer = layer.conv, layer.consumer
    per_filter = conv.weight[0].numel() + (1 if conv.bias is not None else 0) + 2  # + BN weight/bias
    if isinstance(consumer, nn.Conv2d):
        per_input = consumer.weight[:, 0].numel()
    else:
        per_input = consumer.out_features * (consumer.in_features // conv.out_channels)
    return k * (per_filter + per_input)


def _expected_widths(before: dict, layer: ChannelLayer, k: int) -> dict:
    after = dict(before)
    c_in, c_out = before[layer.name]
    after[layer.name] = (c_in, c_out - k)
    after[layer.bn_name] = (before[layer.bn_name][0] - k,)
    r_in, r_out = before[layer.consumer_name]
    spatial = r_in // c_out
    after[layer.consumer_name] = (r_in - k * spatial, r_out)
    return after


class ChannelPruner:
    """One DependencyGraph for a model; `remove(layer, idxs)` cuts filters and checks the cut."""

    def __init__(self, model: nn.Module, example_input: Tensor):
        self.model = model
        self.example_input = example_input
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.out_shape = tuple(model(example_input).shape)
        self.graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
        model.train(was_training)

    def remove(self, layer: ChannelLayer, idxs: list[int]) -> int:
        """Remove output filters `idxs` of `layer.conv` (with its BN and the consumer's inputs).
        Raises RuntimeError if any other layer changed or the parameter count is not the expected one."""
        idxs = sorted(set(int(i) for i in idxs))
        if not idxs:
            return 0
        if len(idxs) >= layer.conv.out_channels or idxs[-1] >= layer.conv.out_channels or idxs[0] < 0:
            raise ValueError(f"{layer.name}: cannot remove {len(idxs)} of {layer.conv.out_channels} filters")
        before, params = layer_widths(self.model), parameter_count(self.model)
        expected = _expected_drop(layer, len(idxs))
        group = self.graph.get_pruning_group(layer.conv, tp.prune_conv_out_channels, idxs=idxs)
        group.prune()
        after, dropped = layer_widths(self.model), params - parameter_count(self.model)
        if after != _expected_widths(before, layer, len(idxs)) or dropped != expected:
            changed = {n: (before.get(n), after.get(n)) for n in after if before.get(n) != after.get(n)}
            raise RuntimeError(
                f"mis-prune at {layer.name}: removed {dropped} params, expected {expected}; "
                f"changed layers: {changed}"
            )
        return dropped

    @torch.no_grad()
    def check_forward(self) -> None:
        """Forward pass on the example input (batch 1) and a batch of 2; shapes must match the original."""
        was_training = self.model.training
        self.model.eval()
        try:
            for batch in (self.example_input, self.example_input.repeat(2, 1, 1, 1)):
                shape = tuple(self.model(batch).shape)
                want = (batch.shape[0], *self.out_shape[1:])
                if shape != want:
                    raise RuntimeError(f"pruned model outputs {shape}, expected {want}")
        finally:
            self.model.train(was_training)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def remove_channels(
    model: nn.Module, plan: dict[str, list[int]], example_input: Tensor, skip_last: int = 0
) -> dict[str, list[int]]:
    """Remove the filters named in `plan` (layer name -> removed filter indices, of the current model);
    returns layer name -> kept indices. Checks every cut and a final forward pass."""
    scope = {layer.name: layer for layer in channel_scope(model, skip_last)}
    unknown = set(plan) - set(scope)
    if unknown:
        raise ValueError(f"layers outside the channel-pruning scope: {sorted(unknown)}")
    pruner = ChannelPruner(model, example_input)
    kept = {}
    for name, idxs in plan.items():
        c = scope[name].conv.out_channels
        kept[name] = [i for i in range(c) if i not in set(idxs)]
        pruner.remove(scope[name], idxs)
    pruner.check_forward()
    return kept


def plan_lowest(layers: list[ChannelLayer], ratios: dict[str, float], scores: dict[str, Tensor]) -> dict:
    """Layer name -> indices of its n_remove(C, r) lowest-scoring filters."""
    return {
        layer.name: lowest(scores[layer.name], n_remove(layer.conv.out_channels, ratios[layer.name]))
        for layer in layers
    }


def block_cuts(
    model: nn.Module, removed: dict[str, int], skip_last: int = 0
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """(out_cut, in_cut, bn_cut) of removing `removed[name]` filters of scope layers: output channels per conv,
    input channels (Linear: input features) per consumer, features per BN, by module name."""
    out_cut: dict[str, int] = {}
    in_cut: dict[str, int] = {}
    bn_cut: dict[str, int] = {}
    for layer in channel_scope(model, skip_last):
        k = removed.get(layer.name, 0)
        spatial = 1 if isinstance(layer.consumer, nn.Conv2d) else \
            layer.consumer.in_features // layer.conv.out_channels
        out_cut[layer.name] = out_cut.get(layer.name, 0) + k
        bn_cut[layer.bn_name] = bn_cut.get(layer.bn_name, 0) + k
        in_cut[layer.consumer_name] = in_cut.get(layer.consumer_name, 0) + k * spatial
    return out_cut, in_cut, bn_cut


def params_after_cuts(
    model: nn.Module, out_cut: dict[str, int], in_cut: dict[str, int], bn_cut: dict[str, int]
) -> int:
    """Parameter count of `model` with the given channels cut (see `block_cuts`), from the layer widths alone."""
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            c_in, c_out = m.in_channels - in_cut.get(name, 0), m.out_channels - out_cut.get(name, 0)
            total += c_in // m.groups * c_out * m.kernel_size[0] * m.kernel_size[1]
            total += c_out if m.bias is not None else 0
        elif isinstance(m, nn.Linear):
            f_in = m.in_features - in_cut.get(name, 0)
            total += f_in * m.out_features + (m.out_features if m.bias is not None else 0)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            total += 2 * (m.num_features - bn_cut.get(name, 0)) if m.affine else 0
        else:
            total += sum(p.numel() for p in m.parameters(recurse=False))
    return total


def params_after_removal(model: nn.Module, removed: dict[str, int], skip_last: int = 0) -> int:
    """Parameter count after removing `removed[name]` filters of scope layers, computed from the layer
    widths alone (no copy, no graph). `remove_channels` checks each real cut against the same arithmetic."""
    return params_after_cuts(model, *block_cuts(model, removed, skip_last))


def uniform_removal(model: nn.Module, ratio: float, skip_last: int = 0) -> dict[str, int]:
    """round(C*ratio) filters of every scope layer, by layer name."""
    return {lay.name: n_remove(lay.conv.out_channels, ratio) for lay in channel_scope(model, skip_last)}


def params_at_channel_ratio(model: nn.Module, ratio: float, skip_last: int = 0) -> int:
    """Parameter count after removing round(C*ratio) filters of every scope layer."""
    return params_after_removal(model, uniform_removal(model, ratio, skip_last), skip_last)


def channel_ratio_for_param_reduction(model: nn.Module, target: float, skip_last: int = 0,
                                      iters: int = 30, scope: str = "block") -> tuple[float, float]:
    """Smallest uniform channel ratio whose parameter reduction reaches `target` (bisection on the count,
    no data needed) for a cut in `scope` (block | stage | all, see `stages.py`). Returns (ratio, achieved
    reduction); if unreachable, the largest ratio and its reduction (< target)."""
    from .stages import scoped_param_count  # stages builds on this module

    base = parameter_count(model)
    if scope == "block":
        reduction = lambda r: 1.0 - params_at_channel_ratio(model, r, skip_last) / base  # noqa: E731
    else:
        reduction = lambda r: 1.0 - scoped_param_count(model, r, scope, skip_last) / base  # noqa: E731
    hi = 0.999
    if reduction(hi) < target:
        return hi, reduction(hi)
    lo = 0.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if reduction(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi, reduction(hi)
