"""Model registry by name, and the architecture spec that rebuilds a (possibly channel-pruned) model
from its name + a JSON of layer widths + a state_dict, without unpickling code."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from .foreign import is_foreign_arch, refuse_rebuild
from .resnet18_cifar import resnet18
from .resnet_cifar import resnet8, resnet14, resnet20, resnet32, resnet56, resnet110
from .torchvision_zoo import (
    build_torchvision,
    build_torchvision_from_spec,
    builder_names,
    is_torchvision_arch,
    torchvision_spec,
)
from .vgg_cifar import vgg11_bn, vgg16_bn, vgg19_bn
from .width import DEFAULT_WIDTH, validate_width

MODEL_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8": resnet8,
    "resnet14": resnet14,
    "vgg11_bn": vgg11_bn,
    "vgg16_bn": vgg16_bn,
    "vgg19_bn": vgg19_bn,
    "resnet18": resnet18,
}
SPEC_VERSION = 1


class UnknownArchError(ValueError):
    pass


def known_archs(torchvision: bool = False) -> list[str]:
    """The zoo's names; with `torchvision`, also `torchvision:<builder>` for every classification builder."""
    return list(MODEL_BUILDERS) + ([f"torchvision:{name}" for name in builder_names()] if torchvision else [])


def build_model(arch: str, num_classes: int = 10, zero_init: bool = False, width: float = DEFAULT_WIDTH) -> nn.Module:
    """A fresh model; `zero_init` applies `zero_init_residual` (raises for a model without residual blocks);
    `width` multiplies the channels of the zoo's builders (`models.width`; 1 = the published model)."""
    width = validate_width(width)
    if is_torchvision_arch(arch):
        if width != DEFAULT_WIDTH:
            raise ValueError(f"width={width:g} is not allowed for arch {arch!r} (only width=1); width applies to: "
                             f"{', '.join(width_archs())}")
        return build_torchvision(arch, num_classes, zero_init)
    if is_foreign_arch(arch):
        raise refuse_rebuild(arch)
    if arch not in MODEL_BUILDERS:
        raise UnknownArchError(f"unknown arch {arch!r}; known: {', '.join(MODEL_BUILDERS)}, or torchvision:<builder> "
                               "(`prune-tracker archs` lists them)")
    model = MODEL_BUILDERS[arch](num_classes) if width == DEFAULT_WIDTH else _with_width(arch, num_classes, width)
    if zero_init:
        zero_init_residual(model)
    return model


def width_archs() -> list[str]:
    """The architectures that take a `width` multiplier (the zoo's builders with a `width` keyword)."""
    return [arch for arch, builder in MODEL_BUILDERS.items() if "width" in inspect.signature(builder).parameters]


def _with_width(arch: str, num_classes: int, width: float) -> nn.Module:
    if arch not in width_archs():
        raise ValueError(f"width={width:g} is not allowed for arch {arch!r} (only width=1); width applies to: "
                         f"{', '.join(width_archs())}")
    return MODEL_BUILDERS[arch](num_classes, width=width)


def model_width(model: nn.Module) -> float:
    """The width multiplier a model was built with (1 for a model without one)."""
    return float(getattr(model, "width", DEFAULT_WIDTH))


def zero_init_residual(model: nn.Module) -> int:
    """Zero the last BatchNorm weight of every residual basic block (torchvision's `zero_init_residual`),
    so each block starts as the identity; returns how many blocks it changed. Raises for a model without
    residual blocks (VGG)."""
    blocks = [
        m for m in model.modules() if hasattr(m, "shortcut") and isinstance(getattr(m, "bn2", None), nn.BatchNorm2d)
    ]
    if not blocks:
        raise ValueError(f"zero_init_residual applies to ResNets; {type(model).__name__} has no residual blocks")
    for block in blocks:
        nn.init.zeros_(block.bn2.weight)
    return len(blocks)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layer_shape(module: nn.Module) -> dict[str, Any] | None:
    if isinstance(module, nn.Conv2d):
        return {"type": "Conv2d", "in_channels": module.in_channels, "out_channels": module.out_channels}
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in_features": module.in_features, "out_features": module.out_features}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"type": type(module).__name__, "num_features": module.num_features}
    return None


def architecture_spec(model: nn.Module, arch: str, num_classes: int) -> dict[str, Any]:
    """Channels of every Conv2d / Linear / BatchNorm layer, by module name (the JSON artifact)."""
    if is_torchvision_arch(arch):  # builder + kwargs + widths (groups too: depthwise convs lose channels)
        return torchvision_spec(model, arch, num_classes)
    layers = {}
    for name, module in model.named_modules():
        shape = _layer_shape(module)
        if shape is not None:
            layers[name] = shape
    return {"spec_version": SPEC_VERSION, "arch": arch, "num_classes": num_classes, "width": model_width(model),
            "layers": layers}


def _resized(module: nn.Module, shape: dict[str, Any]) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(shape["in_channels"], shape["out_channels"], module.kernel_size, module.stride,
                         module.padding, module.dilation, module.groups, module.bias is not None)
    if isinstance(module, nn.Linear):
        return nn.Linear(shape["in_features"], shape["out_features"], module.bias is not None)
    return type(module)(shape["num_features"], module.eps, module.momentum, module.affine,
                        module.track_running_stats)


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Build the named architecture at the spec's `width` (1 when absent), then resize every layer whose width the
    spec changes."""
    if is_torchvision_arch(spec["arch"]):
        return build_torchvision_from_spec(spec)
    if is_foreign_arch(spec["arch"]):
        raise refuse_rebuild(spec["arch"])
    model = build_model(spec["arch"], int(spec["num_classes"]), width=float(spec.get("width", DEFAULT_WIDTH)))
    modules = dict(model.named_modules())
    for name, shape in spec["layers"].items():
        if name not in modules:
            raise ValueError(f"architecture spec names layer {name!r}, which {spec['arch']} does not have")
        if _layer_shape(modules[name]) != shape:
            parent_name, _, child = name.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, child, _resized(modules[name], shape))
    return model
