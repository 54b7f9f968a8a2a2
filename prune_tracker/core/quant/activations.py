"""w8a8: int8 weights (per-channel, as `weights`) and int8 activations (per-tensor).

Activations are quantised where an integer GEMM reads them: the input of every Conv2d and Linear (the
QuantConv2d / QuantLinear scheme of NVIDIA's pytorch-quantization and of torch.ao's static quantisation),
so every multiply is int8 x int8; residual adds and pooling stay in the accumulator precision. Each input
gets a torch.ao FakeQuantize (quint8, per-tensor affine, MinMax observer) calibrated on the given batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.ao.quantization import FakeQuantize, MinMaxObserver

from .weights import fake_quant_model, quantized_layers


def _input_quantizer() -> FakeQuantize:
    return FakeQuantize(observer=MinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine)


def _quantize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (module.input_quant(args[0]), *args[1:])


def _images(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def attach_input_quantizers(model: nn.Module) -> list[FakeQuantize]:
    """Give every Conv2d / Linear of `model` (in place) an `input_quant` FakeQuantize run on its input."""
    quantizers = []
    for _, layer in quantized_layers(model):
        layer.input_quant = _input_quantizer().to(layer.weight.device)
        layer.register_forward_pre_hook(_quantize_input)
        quantizers.append(layer.input_quant)
    return quantizers


@torch.no_grad()
def calibrate_w8a8(model: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """BN-folded eval copy of `model` with int8 fake-quantised weights and conv / linear inputs, the activation
    ranges observed on `batches` (images, or (images, labels) pairs; one pass, nothing else is read)."""
    quantized = fake_quant_model(model, "int8")
    quantizers = attach_input_quantizers(quantized)
    for q in quantizers:
        q.disable_fake_quant()
    device = next(quantized.parameters()).device
    seen = 0
    for batch in batches:
        quantized(_images(batch).to(device))
        seen += 1
    if not seen:
        raise ValueError("calibrate_w8a8 needs at least one batch")
    for q in quantizers:
        q.disable_observer()
        q.enable_fake_quant()
    return quantized


def int8_activation_bytes(fp32_bytes: float) -> int:
    """Bytes of activations stored as int8, from their fp32 size (one byte per value)."""
    return math.ceil(fp32_bytes / 4)
