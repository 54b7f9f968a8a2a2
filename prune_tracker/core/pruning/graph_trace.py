"""Tracing a model into Torch-Pruning's DependencyGraph without its failure modes on channel regrouping.

A channel shuffle (ShuffleNet: `x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)`) and other
reshapes that split or merge the channel axis permute channels in a way Torch-Pruning's index mapping does not
model: with torch 2.14 it reads every view as a flatten (ViewBackward0 no longer saves `_saved_self_sizes`, which
Torch-Pruning 1.6.1 checks), and on ShuffleNetV2 its shape inference divides by zero. While the graph is traced,
each such op runs as an opaque `ChannelRegroup` autograd node named after the module that ran it; Torch-Pruning
then treats it as an element-wise op, and `regroup_site` finds it in a group: the channels of that group pass
through the regrouping, so the group is kept whole (the other groups are cut as usual).

Any exception Torch-Pruning raises while tracing becomes a one-line `GraphPruneError` naming the model. A model that
computes attention (a softmax over 3+ dimensions: Swin, ViT) is refused by name (`find_attention`): Torch-Pruning's
index mapping loops on its window and head reshapes, and heads are not channels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .channels import ScopeError


class GraphPruneError(ScopeError):
    """A cut the dependency graph cannot make or that failed its verification (one line, names the layer)."""


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


_RESHAPES = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.flatten, torch.flatten,
             torch.Tensor.unflatten, torch.unflatten, torch.Tensor.view_as, torch.Tensor.reshape_as}
_CHANNEL_OPS = {torch.nn.functional.channel_shuffle, torch.channel_shuffle, torch.native_channel_shuffle,
                torch.nn.functional.pixel_shuffle, torch.nn.functional.pixel_unshuffle, torch.pixel_shuffle,
                torch.pixel_unshuffle}


def _regroups(source: Any, result: Any) -> bool:
    """A reshape of an (N, C, ...) map whose first two dimensions change, other than a flatten to 2-D (which
    Torch-Pruning maps itself): the channel axis is split or merged."""
    if not isinstance(source, Tensor) or not isinstance(result, Tensor):
        return False
    return source.dim() >= 3 and result.dim() >= 3 and tuple(source.shape[:2]) != tuple(result.shape[:2])


class ChannelRegroup(torch.autograd.Function):
    """Stands in for a channel-regrouping op during tracing: its value, one autograd node, the module's name."""

    @staticmethod
    def forward(ctx: Any, source: Tensor, value: Tensor, site: tuple[int, str]) -> Tensor:
        ctx.site = site  # (order of the op in the forward pass, module name)
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # never run: the trace only walks the autograd graph
        raise RuntimeError("ChannelRegroup is for dependency tracing only")


class _MarkRegroups(TorchFunctionMode):
    def __init__(self, stack: list[str]):
        super().__init__()
        self.stack, self.count = stack, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if args and (func in _CHANNEL_OPS or (func in _RESHAPES and _regroups(args[0], result))) and \
                isinstance(args[0], Tensor) and args[0].requires_grad:
            self.count += 1
            return ChannelRegroup.apply(args[0], result.detach(), (self.count, self.stack[-1] if self.stack else "?"))
        return result


_ATTENTION = {torch.softmax, torch.Tensor.softmax, torch.nn.functional.softmax,
              torch.nn.functional.scaled_dot_product_attention}


class _FindAttention(TorchFunctionMode):
    """Notes the module of the first softmax over a tensor of 3 or more dimensions (attention weights; a classifier's
    softmax is 2-D) or scaled-dot-product attention."""

    def __init__(self, stack: list[str]):
        super().__init__()
        self.stack, self.site = stack, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.site is None and func in _ATTENTION and args and isinstance(args[0], Tensor) and args[0].dim() >= 3:
            self.site = self.stack[-1] if self.stack else "?"
        return func(*args, **(kwargs or {}))


def regroup_site(node: Any) -> tuple[int, str] | None:
    """(order in the forward pass, name of the module whose forward ran it) of a channel regrouping at this graph
    node, else None."""
    return getattr(getattr(node, "grad_fn", None), "site", None)


@contextmanager
def _module_stack(model: nn.Module) -> Iterator[list[str]]:
    """The names of the modules whose forward is running, innermost last (the model itself: `<Class>.forward`)."""
    names = {m: n for n, m in model.named_modules()}
    names[model] = f"{type(model).__name__}.forward"
    stack: list[str] = []

    def enter(module: nn.Module, _args: Any) -> None:
        stack.append(names[module])

    def leave(_module: nn.Module, _args: Any, _out: Any) -> None:  # must return None: a value replaces the output
        stack.pop()

    handles = []
    for module in model.modules():
        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def find_attention(model: nn.Module, example_input: Tensor) -> str | None:
    """The module where `model` first computes attention weights, else None (a CNN)."""
    with _module_stack(model) as stack, _FindAttention(stack) as mode:
        model(example_input)
    return mode.site


def build_graph(model: nn.Module, example_input: Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's DependencyGraph of `model` traced on `example_input`, channel regroupings marked."""
    try:
        with _module_stack(model) as stack, _MarkRegroups(stack):
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    except Exception as err:  # noqa: BLE001 - any failure inside Torch-Pruning is reported the same way
        raise GraphPruneError(f"Torch-Pruning cannot trace {type(model).__name__}: {first_line(err)}") from None
