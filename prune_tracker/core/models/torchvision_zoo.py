"""torchvision classification builders by name: `arch=torchvision:<builder>` (e.g. `torchvision:resnet18`,
`torchvision:mobilenet_v3_small`), any name of `torchvision.models.list_models(module=torchvision.models)`.

A model is built with `weights=None` (no download) and `num_classes` from the dataset; builders whose model
class takes `aux_logits` (googlenet, inception_v3) get `aux_logits=False` so training sees plain logits, and
`zero_init_residual` is passed to the builders that accept it. Images are not resized: ImageNet stems (stride-2
conv, max-pool) bring a 32x32 CIFAR image down to 1x1 by the last stage, which costs accuracy (see README).

The spec records the builder, its keyword arguments and the width of every layer a channel cut can change
(Conv2d in/out channels and groups, Linear features, BatchNorm features, LayerNorm shape); `build_from_spec`
calls the builder again and replaces each layer whose recorded width differs by a layer of that width, so a
channel-pruned model rebuilds from JSON + state_dict without unpickling.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn

PREFIX = "torchvision:"
SPEC_KIND = "torchvision"
LIST_HINT = "`prune-tracker archs` lists them (torchvision.models.list_models(module=torchvision.models))"


class UnknownBuilderError(ValueError):
    pass


def is_torchvision_arch(arch: str | None) -> bool:
    return bool(arch) and arch.startswith(PREFIX)


@functools.cache
def builder_names() -> tuple[str, ...]:
    """The classification builders torchvision registers (detection, segmentation, video are submodules)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def builder_name(arch: str) -> str:
    """`torchvision:resnet18` -> `resnet18`; an unknown name is one line saying how to list the valid ones."""
    name = arch[len(PREFIX):] if is_torchvision_arch(arch) else arch
    if name not in builder_names():
        raise UnknownBuilderError(f"unknown torchvision builder {name!r} (arch={arch!r}); {LIST_HINT}")
    return name


def builder_kwargs(name: str, num_classes: int, zero_init: bool = False) -> dict[str, Any]:
    """The keyword arguments a torchvision builder is called with (recorded in the spec)."""
    import torchvision

    model_class = inspect.signature(torchvision.models.get_model_builder(name)).return_annotation
    accepted = inspect.signature(model_class.__init__).parameters if inspect.isclass(model_class) else {}
    kwargs: dict[str, Any] = {"weights": None, "num_classes": int(num_classes)}
    if "aux_logits" in accepted:
        kwargs["aux_logits"] = False  # plain logits in training mode (googlenet, inception_v3)
    if "init_weights" in accepted:
        kwargs["init_weights"] = True  # what torchvision does without weights (and it stops a warning)
    if zero_init:
        if "zero_init_residual" not in accepted:
            raise ValueError(f"zero_init_residual applies to ResNets; torchvision:{name} does not take it")
        kwargs["zero_init_residual"] = True
    return kwargs


def _call_builder(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, **kwargs)


def build_torchvision(arch: str, num_classes: int = 10, zero_init: bool = False) -> nn.Module:
    """A fresh `torchvision:<builder>` model, randomly initialised, with `num_classes` outputs."""
    name = builder_name(arch)
    return _call_builder(name, builder_kwargs(name, num_classes, zero_init))


def layer_shape(module: nn.Module) -> dict[str, Any] | None:
    """What a channel cut can change in a layer (None: a layer without channel widths)."""
    if isinstance(module, nn.Conv2d):
        return {"type": "Conv2d", "in_channels": module.in_channels, "out_channels": module.out_channels,
                "groups": module.groups}
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in_features": module.in_features, "out_features": module.out_features}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"type": type(module).__name__, "num_features": module.num_features}
    if isinstance(module, nn.LayerNorm):
        return {"type": "LayerNorm", "normalized_shape": list(module.normalized_shape)}
    return None


def torchvision_spec(model: nn.Module, arch: str, num_classes: int) -> dict[str, Any]:
    """The JSON spec of a (possibly channel-pruned) torchvision model: builder, kwargs, layer widths."""
    from . import SPEC_VERSION

    name = builder_name(arch)
    layers = {n: s for n, m in model.named_modules() if (s := layer_shape(m)) is not None}
    kwargs = builder_kwargs(name, num_classes)  # initialisation-only options (zero_init_residual) do not matter here
    return {"spec_version": SPEC_VERSION, "arch": f"{PREFIX}{name}", "kind": SPEC_KIND, "builder": name,
            "kwargs": kwargs, "num_classes": int(num_classes), "layers": layers, "parameters": bare_parameters(model)}


def bare_parameters(model: nn.Module) -> dict[str, list[int]]:
    """Shapes of the parameters held by modules without channel widths (a ConvNeXt block's `layer_scale`): a
    channel cut may shrink them too."""
    return {f"{n}.{p}" if n else p: list(param.shape) for n, m in model.named_modules() if layer_shape(m) is None
            for p, param in m.named_parameters(recurse=False)}


def _resized(module: nn.Module, shape: dict[str, Any]) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(shape["in_channels"], shape["out_channels"], module.kernel_size, module.stride,
                         module.padding, module.dilation, shape["groups"], module.bias is not None,
                         module.padding_mode)
    if isinstance(module, nn.Linear):
        return nn.Linear(shape["in_features"], shape["out_features"], module.bias is not None)
    if isinstance(module, nn.LayerNorm):  # type(module): ConvNeXt's LayerNorm2d keeps its channels-first forward
        return type(module)(shape["normalized_shape"], module.eps, module.elementwise_affine,
                            module.bias is not None)
    return type(module)(shape["num_features"], module.eps, module.momentum, module.affine,
                        module.track_running_stats)


def build_torchvision_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Call the spec's builder with its kwargs, then replace every layer whose width the spec changes."""
    name = builder_name(spec.get("builder") or spec["arch"])
    kwargs = {**spec.get("kwargs", {}), "weights": None, "num_classes": int(spec["num_classes"])}
    model = _call_builder(name, kwargs)
    modules = dict(model.named_modules())
    for layer, shape in spec["layers"].items():
        if layer not in modules:
            raise ValueError(f"architecture spec names layer {layer!r}, which torchvision:{name} does not have")
        current = layer_shape(modules[layer])
        if current is None or current["type"] != shape["type"]:
            raise ValueError(f"architecture spec says {layer!r} is a {shape['type']}; torchvision:{name} has "
                             f"{type(modules[layer]).__name__} there")
        if current != shape:
            parent, _, child = layer.rpartition(".")
            setattr(modules[parent] if parent else model, child, _resized(modules[layer], shape))
    _resize_parameters(model, spec.get("parameters", {}), name)
    return model


def _resize_parameters(model: nn.Module, shapes: dict[str, list[int]], name: str) -> None:
    """Give each recorded bare parameter its recorded shape (its values come from the state_dict)."""
    for qualified, shape in shapes.items():
        owner_name, _, attr = qualified.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        param = getattr(owner, attr, None)
        if not isinstance(param, nn.Parameter):
            raise ValueError(f"architecture spec names parameter {qualified!r}, which torchvision:{name} does not have")
        if list(param.shape) != list(shape):
            setattr(owner, attr, nn.Parameter(param.new_empty(shape), requires_grad=param.requires_grad))
