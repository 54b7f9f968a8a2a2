"""BatchNorm folding: every Conv2d -> BatchNorm2d (and Linear -> BatchNorm1d) pair becomes one layer with a bias.

Pairs are found on the torch.fx graph (a BN whose only input is a conv / linear output that nothing else
reads); a model fx cannot trace falls back to a naming rule (siblings `convN`/`bnN`, or a conv directly
followed by a BN in an nn.Sequential). Folding scales each output channel by gamma / sqrt(var + eps), so a
zero weight stays zero and prune masks survive.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils import prune
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

_BN = nn.modules.batchnorm._BatchNorm


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    kinds = (type(layer) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d)) or (
        type(layer) is nn.Linear and isinstance(bn, nn.BatchNorm1d)
    )
    return kinds and bn.running_mean is not None and layer.weight.shape[0] == bn.num_features


def traced_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Foldable pairs on the fx graph: a BN whose input is a conv / linear output read by nothing else."""
    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    calls = [n.target for n in graph.nodes if n.op == "call_module"]
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BN) or not node.args:
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        # a layer called twice (weight sharing) cannot absorb one BN
        if calls.count(src.target) == 1 and _foldable(modules[src.target], modules[node.target]):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def named_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Foldable pairs by name: siblings convN / bnN, or a conv followed by a BN in an nn.Sequential."""
    pairs = []
    for parent_name, parent in model.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        children = list(parent.named_children())
        kids = dict(children)
        local = [(name, f"bn{name[4:]}") for name in kids if name.startswith("conv") and f"bn{name[4:]}" in kids]
        if isinstance(parent, nn.Sequential):
            local += [(a, b) for (a, _), (b, _) in zip(children, children[1:], strict=False)]
        pairs += [(prefix + a, prefix + b) for a, b in local if _foldable(kids[a], kids[b])]
    return list(dict.fromkeys(pairs))


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer name, BatchNorm name) of every foldable pair, by fx tracing or else by the naming rule."""
    try:
        return traced_conv_bn_pairs(model)
    except Exception:  # fx raises TraceError, TypeError, RuntimeError... on untraceable Python
        return named_conv_bn_pairs(model)


def _copy(model: nn.Module) -> nn.Module:
    # masked modules hold `weight` = weight_orig * weight_mask, a non-leaf tensor deepcopy refuses
    memo = {id(t): t.detach().clone() for m in model.modules() for t in vars(m).values()
            if isinstance(t, torch.Tensor) and t.grad_fn is not None}
    return copy.deepcopy(model, memo)


def _plain_weights(model: nn.Module) -> None:
    """Fold attached torch.nn.utils.prune masks into plain weights (zeros where masked)."""
    for module in model.modules():
        for key in [k for k, _ in module.named_buffers(recurse=False) if k.endswith("_mask")]:
            if hasattr(module, f"{key[:-5]}_orig"):
                prune.remove(module, key[:-5])


@torch.no_grad()
def _fold_pair(layer: nn.Module, bn: _BN) -> None:
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    if isinstance(layer, nn.Conv2d):
        weight, bias = fuse_conv_bn_weights(layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps,
                                            gamma, beta)
    else:
        weight, bias = fuse_linear_bn_weights(layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps,
                                              gamma, beta)
    layer.weight, layer.bias = weight, bias


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every foldable BatchNorm folded into its conv / linear (which gains a bias) and
    replaced by nn.Identity; prune masks are made permanent in the copy. The caller's model is untouched."""
    folded = _copy(model).eval()
    _plain_weights(folded)
    modules = dict(folded.named_modules())
    for layer_name, bn_name in conv_bn_pairs(folded):
        _fold_pair(modules[layer_name], modules[bn_name])
        _replace(folded, bn_name, nn.Identity())
    return folded
