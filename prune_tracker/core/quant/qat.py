"""Quantisation-aware training: every Conv2d / Linear weight is fake-quantised in the forward pass
(torch.nn.utils.parametrize), per-channel symmetric with scales recomputed from the current weight each
forward, and the gradient passes straight through (fake_quantize's STE).

Works with torch.nn.utils.prune masks: on a masked layer the parametrisation sits on `weight_orig` and
quantises `weight_orig * weight_mask` (the scales are those of the weight actually deployed); prune's hook
then multiplies by the mask again, so masked entries stay exactly zero. Per-channel symmetric quantisation
commutes with BatchNorm's per-channel scaling up to the fp16 rounding of the scale, so training on unfolded
weights matches the deployed (folded, then quantised) model. Call `disable_qat` before `prune.remove` /
saving: the state_dict is then the plain one again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.nn.utils import parametrize

from .weights import fake_quantize, quantized_layers, validate_precision


class FakeQuantWeight(nn.Module):
    """Parametrisation: the weight (times the prune mask of `owner`, if any) fake-quantised at `precision`."""

    def __init__(self, precision: str, owner: nn.Module | None = None):
        super().__init__()
        self.precision = validate_precision(precision)
        # a plain reference, not a submodule: the owner contains this parametrisation
        object.__setattr__(self, "_owner", owner)

    def forward(self, weight: Tensor) -> Tensor:
        mask = getattr(self._owner, "weight_mask", None)
        return fake_quantize(weight if mask is None else weight * mask, self.precision)


def _masked(layer: nn.Module) -> bool:
    return hasattr(layer, "weight_mask") and hasattr(layer, "weight_orig")


def enable_qat(model: nn.Module, precision: str) -> nn.Module:
    """Fake-quantise every Conv2d / Linear weight of `model` (in place) during training; returns `model`."""
    validate_precision(precision)
    for _, layer in quantized_layers(model):
        if parametrize.is_parametrized(layer):
            raise ValueError(f"{type(layer).__name__} is already parametrised; call disable_qat first")
        if _masked(layer):
            parametrize.register_parametrization(layer, "weight_orig", FakeQuantWeight(precision, layer))
        else:
            parametrize.register_parametrization(layer, "weight", FakeQuantWeight(precision))
    return model


def disable_qat(model: nn.Module, keep_quantized: bool = False) -> nn.Module:
    """Remove the QAT parametrisations (in place): layers are plain Conv2d / Linear again. The weights kept
    are the latent fp32 ones, or with `keep_quantized` their fake-quantised values; returns `model`."""
    for _, layer in quantized_layers(model):
        for name in list(getattr(layer, "parametrizations", {}).keys()):
            if any(isinstance(p, FakeQuantWeight) for p in layer.parametrizations[name]):
                parametrize.remove_parametrizations(layer, name, leave_parametrized=keep_quantized)
    return model


QAT_CHOICES = ("none", "int8", "int4")


def validate_qat(precision: str) -> str:
    if precision not in QAT_CHOICES:
        raise ValueError(f"unknown QAT precision {precision!r}; allowed: {', '.join(QAT_CHOICES)}")
    return precision


def qat_finetune(finetune: Callable[..., Any], precision: str) -> Callable[..., Any]:
    """Wrap a `finetune(model, epochs, step_callback=None)` callable so it trains with QAT at `precision`:
    `enable_qat` before the call, `disable_qat` after (also when it raises); "none" returns `finetune` itself.

    Afterwards the model keeps its latent fp32 weights (keep_quantized=False), the ones the fake-quant was
    applied to: precision measurements and the deployable file quantise them again (after BN folding), which
    gives the weights QAT trained against up to the fp16 rounding of the folded scales, whereas snapping to
    the unfolded grid first would round twice; fp32 / fp16 measurements see the plain trained weights.
    Masks (torch.nn.utils.prune) stay attached; they should not change during the call (the QAT
    parametrisation sits on weight_orig, so an in-place mask update of weight_orig would not reach it)."""
    if validate_qat(precision) == "none":
        return finetune

    @functools.wraps(finetune)
    def wrapped(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        enable_qat(model, precision)
        try:
            return finetune(model, *args, **kwargs)
        finally:
            disable_qat(model, keep_quantized=False)

    return wrapped
