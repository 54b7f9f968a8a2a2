"""Weight quantisation after BatchNorm folding: fp16 (a cast), or symmetric per-output-channel int8 / int4
(levels -127..127 / -7..7, zero point 0) with one fp16 scale per output channel.

Scales are amax / qmax per output channel (at least FP32_EPS: the arithmetic of torch.ao's
PerChannelMinMaxObserver, which this replaces bit for bit) and are rounded to fp16 before use, so the scale stored
is the scale applied. Rounding is torch.fake_quantize_per_channel_affine; since
|q| <= 127 and the scale has an 11-bit mantissa, q * scale is exact in fp32, so the integers recovered from
the fake-quantised weight dequantise to exactly it. Zero stays zero (round(0) = 0); every Conv2d and Linear
weight is quantised; biases and any other tensors stay fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .fold import fold_batch_norm

PRECISIONS = ("fp16", "int8", "int4")
BITS = {"fp16": 16, "int8": 8, "int4": 4}
QMAX = {"int8": 127, "int4": 7}
FP32_EPS = torch.finfo(torch.float32).eps  # the smallest scale torch.ao's observers give
_SMALLEST_FP16 = 2.0**-24  # smallest fp16 subnormal: an all-zero channel must not get scale 0


def validate_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    return precision


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers whose weight is quantised: every Conv2d and Linear, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def channel_scales(weight: Tensor, precision: str) -> Tensor:
    """fp16 per-output-channel symmetric scales (amax / qmax) of an int8 / int4 weight."""
    low, high = torch.aminmax(weight.detach().float().flatten(1), dim=1)
    amax = torch.max(-torch.clamp(low, max=0), torch.clamp(high, min=0))
    scale = torch.clamp(amax / float(QMAX[precision]), min=FP32_EPS)
    return scale.to(torch.float16).clamp_min(_SMALLEST_FP16)


def fake_quantize(weight: Tensor, precision: str, scales: Tensor | None = None) -> Tensor:
    """`weight` rounded to `precision` and back to fp32; differentiable (straight-through estimator)."""
    if precision == "fp16":
        return weight.half().to(weight.dtype)
    scales = channel_scales(weight, precision) if scales is None else scales
    zero_points = torch.zeros(scales.shape, dtype=torch.int32, device=weight.device)
    qmax = QMAX[precision]
    return torch.fake_quantize_per_channel_affine(weight, scales.float(), zero_points, 0, -qmax, qmax)


def _per_channel(scales: Tensor, dims: int) -> Tensor:
    return scales.float().reshape(-1, *([1] * (dims - 1)))


@dataclass
class QuantizedTensor:
    """`values`: int8 levels (int8 / int4) or fp16 values; `scales`: fp16 per output channel (None for fp16)."""

    precision: str
    values: Tensor
    scales: Tensor | None = None

    def dequantize(self) -> Tensor:
        if self.scales is None:
            return self.values.float()
        return self.values.float() * _per_channel(self.scales, self.values.dim())


def quantize_tensor(weight: Tensor, precision: str) -> QuantizedTensor:
    validate_precision(precision)
    weight = weight.detach().float()
    if precision == "fp16":
        return QuantizedTensor(precision, weight.half())
    scales = channel_scales(weight, precision)
    levels = torch.round(fake_quantize(weight, precision, scales) / _per_channel(scales, weight.dim()))
    return QuantizedTensor(precision, levels.to(torch.int8), scales)


@dataclass
class QuantizedModel:
    """`model`: BN-folded eval copy whose quantised weights hold their dequantised fp32 values;
    `weights`: "<layer>.weight" -> QuantizedTensor; `others`: every other floating tensor of its state_dict."""

    precision: str
    model: nn.Module
    weights: dict[str, QuantizedTensor] = field(default_factory=dict)
    others: dict[str, Tensor] = field(default_factory=dict)


@torch.no_grad()
def quantize_weights(model: nn.Module, precision: str) -> QuantizedModel:
    """Fold BatchNorm into a copy of `model`, then quantise every Conv2d / Linear weight."""
    validate_precision(precision)
    result = QuantizedModel(precision, fold_batch_norm(model))
    for name, layer in quantized_layers(result.model):
        quantized = quantize_tensor(layer.weight, precision)
        layer.weight.copy_(quantized.dequantize().to(layer.weight))
        result.weights[f"{name}.weight"] = quantized
    state = result.model.state_dict()
    result.others = {k: v.detach().clone() for k, v in state.items() if k not in result.weights
                     and v.is_floating_point()}
    return result


def fake_quant_model(model: nn.Module, precision: str) -> nn.Module:
    """BN-folded eval copy of `model` with fake-quantised (quantised, then dequantised) fp32 weights."""
    return quantize_weights(model, precision).model
