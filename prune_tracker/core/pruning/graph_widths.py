"""The widths a channel cut may change and the parameter count they imply (what every graph cut is checked
against): Conv2d (in, out, groups), Linear (in, out), BatchNorm (features), LayerNorm (shape), and the shape of
every parameter a module of another type holds itself (a ConvNeXt block's `layer_scale`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

_BN = nn.modules.batchnorm._BatchNorm
WIDTH_TYPES = (nn.Conv2d, nn.Linear, _BN, nn.LayerNorm)


def _shape(module: nn.Module) -> tuple:
    if isinstance(module, nn.Conv2d):
        return (module.in_channels, module.out_channels, module.groups)
    if isinstance(module, nn.Linear):
        return (module.in_features, module.out_features)
    if isinstance(module, _BN):
        return (module.num_features,)
    return tuple(module.normalized_shape)


def widths(model: nn.Module) -> dict[str, tuple]:
    """Widths of every layer a cut can change, by module name, and the shape of every bare parameter (one held by a
    module outside WIDTH_TYPES), by parameter name."""
    found: dict[str, tuple] = {}
    for name, module in model.named_modules():
        if isinstance(module, WIDTH_TYPES):
            found[name] = _shape(module)
        else:
            for pname, param in module.named_parameters(recurse=False):
                found[f"{name}.{pname}" if name else pname] = tuple(param.shape)
    return found


def _layer_params(module: nn.Module, shape: tuple) -> int:
    """Parameters a WIDTH_TYPES layer holds if its widths were `shape`."""
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
    """Parameter count of `model` if its layers and bare parameters had the widths `shapes` (see `widths`)."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, WIDTH_TYPES):
            total += _layer_params(module, shapes.get(name, _shape(module)))
            continue
        for pname, param in module.named_parameters(recurse=False):
            total += math.prod(shapes.get(f"{name}.{pname}" if name else pname, param.shape))
    return total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def is_depthwise(module: nn.Module) -> bool:
    """Torch-Pruning's depthwise conv (groups == out_channels > 1): its inputs follow its outputs."""
    return isinstance(module, nn.Conv2d) and module.groups == module.out_channels > 1


@dataclass
class Cut:
    """One layer (or bare parameter) a group cut changes: output channels (`out`) or input channels, `idxs` in the
    layer's own channel numbering, `root_idxs` the group's channels they are."""

    name: str
    module: object  # nn.Module, or nn.Parameter for a bare parameter
    out: bool
    idxs: list[int]
    root_idxs: list[int]
    dim: int = 0  # the dimension cut, for a bare parameter


def expected_widths(before: dict[str, tuple], cuts: list[Cut]) -> dict[str, tuple]:
    """Widths after the cuts (a depthwise conv loses inputs, outputs and groups; a bare parameter its `dim`)."""
    removed: dict[tuple[str, bool], set[int]] = {}
    targets: dict[str, Cut] = {}
    for cut in cuts:
        key = (cut.name, True if is_depthwise(cut.module) else cut.out)
        removed.setdefault(key, set()).update(cut.idxs)
        targets[cut.name] = cut
    after = dict(before)
    for (name, out), idxs in removed.items():
        if name not in after:
            continue
        cut, k, shape = targets[name], len(idxs), list(after[name])
        module = cut.module
        if isinstance(module, nn.Parameter):
            shape[cut.dim] -= k
        elif is_depthwise(module):
            shape = [shape[0] - k, shape[1] - k, shape[2] - k]
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            shape[1 if out else 0] -= k
        else:  # BatchNorm features, LayerNorm's last dimension
            shape[-1] -= k
        after[name] = tuple(shape)
    return after
