"""w8a8: int8 weights (per-channel, as `weights`) and int8 activations (per-tensor affine uint8, MinMax-calibrated).

Every activation tensor is quantised: the input image and the output of every floating-point op of the BN-folded
model (convolutions, ReLUs, residual adds, padding of the skip path, pooling, ...), op by op as eager PyTorch runs
them; views (slices, reshapes) share their source's quantised values. That is the set of tensors the footprint's
activation peak counts (one TorchDispatchMode sees each aten op in both), so `total_w8a8_bytes`, which counts each
of them at one byte, is the memory of the model simulated here. The logits stay fp32: an integer runtime
dequantises the last layer's accumulator for the argmax, it stores no activation from it.

The graph must be static (the same ops in the same order for every batch, as for any CNN); a forward that runs
another op sequence than calibration saw raises. Scales: torch.ao's MinMaxObserver arithmetic (`affine_qparams`),
then torch.fake_quantize_per_tensor_affine, the op torch.ao's FakeQuantize calls.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from .weights import FP32_EPS, fake_quant_model

QUANT_MIN, QUANT_MAX = 0, 255  # uint8 activations


def affine_qparams(low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """Per-tensor affine uint8 (scale, zero point) of the range [low, high] widened to hold 0: the arithmetic of
    torch.ao's MinMaxObserver (scale at least FP32_EPS; zero point rounded half to even, clamped to 0..255)."""
    low, high = torch.clamp(low.float(), max=0), torch.clamp(high.float(), min=0)
    scale = torch.clamp((high - low) / float(QUANT_MAX - QUANT_MIN), min=FP32_EPS)
    zero_point = torch.clamp(QUANT_MIN - torch.round(low / scale).to(torch.int), QUANT_MIN, QUANT_MAX)
    return scale.reshape(1), zero_point.reshape(1).to(torch.int32)


class ActivationQuantizer:
    """One tensor's running min / max over the calibration batches, then its fake-quantisation."""

    def __init__(self, op: str):
        self.op = op
        self.low: Tensor | None = None
        self.high: Tensor | None = None
        self.scale: Tensor | None = None
        self.zero_point: Tensor | None = None

    def observe(self, tensor: Tensor) -> None:
        low, high = torch.aminmax(tensor.detach().float())
        self.low = low if self.low is None else torch.min(self.low, low)
        self.high = high if self.high is None else torch.max(self.high, high)

    def freeze(self) -> None:
        self.scale, self.zero_point = affine_qparams(self.low, self.high)

    def __call__(self, tensor: Tensor) -> Tensor:
        return torch.fake_quantize_per_tensor_affine(tensor, self.scale, self.zero_point, QUANT_MIN, QUANT_MAX)


def _op_name(func: Any) -> str:
    return str(func.overloadpacket.__name__)


def _is_activation(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point() and value.numel() > 0


class _EveryOpOutput(TorchDispatchMode):
    """Hands each floating op output of one forward (not views) to `model.on_output`, numbered in call order."""

    def __init__(self, model: W8A8Model):
        super().__init__()
        self.model, self.index = model, 0

    def _next(self, func: Any, value: Any) -> Any:
        if not _is_activation(value):
            return value
        self.index += 1
        return self.model.on_output(self.index - 1, func, value)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        if isinstance(out, tuple):  # e.g. batch norm's (output, saved statistics)
            return tuple(self._next(func, value) for value in out)
        return self._next(func, out)


class W8A8Model(nn.Module):
    """The BN-folded int8-weight model with every activation fake-quantised (see the module docstring).
    Calibrating until `freeze()`: it observes ranges and quantises nothing."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = fake_quant_model(model, "int8")
        self.input_quantizer = ActivationQuantizer("input")
        self.quantizers: list[ActivationQuantizer] = []
        self.calibrating = True
        self.output_index: int | None = None  # the op whose output the forward returns (the logits)
        self._storages: dict[int, int] = {}

    def on_output(self, index: int, func: Any, out: Tensor) -> Tensor:
        op = _op_name(func)
        if self.calibrating and index == len(self.quantizers):
            self.quantizers.append(ActivationQuantizer(op))
        if index >= len(self.quantizers) or self.quantizers[index].op != op:
            raise RuntimeError(f"w8a8: op #{index} ({op}) is not the one calibration saw there: the model's graph "
                               "is not static")
        if self.calibrating:
            self.quantizers[index].observe(out)
            self._storages[index] = out.untyped_storage().data_ptr()
            return out
        if index == self.output_index:
            return out
        quantized = self.quantizers[index](out)
        return out.copy_(quantized) if func._schema.is_mutable else quantized  # in place: keep the caller's tensor

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            self.input_quantizer.observe(x)
        else:
            x = self.input_quantizer(x)
        # one grad mode for calibration and evaluation: it decides which aten ops a module dispatches to
        with torch.inference_mode(), _EveryOpOutput(self):
            out = self.model(x)
        if self.calibrating:
            storage = out.untyped_storage().data_ptr()  # the latest op that wrote the returned storage
            self.output_index = max(i for i, s in self._storages.items() if s == storage)
        return out

    def freeze(self) -> W8A8Model:
        if self.input_quantizer.low is None:
            raise ValueError("calibrate_w8a8 needs at least one batch")
        for quantizer in (self.input_quantizer, *self.quantizers):
            quantizer.freeze()
        self.calibrating, self._storages = False, {}
        return self.eval()

    @property
    def quantized_ops(self) -> list[str]:
        """The op of every activation quantised, in call order (the logits' op excluded), after the input."""
        return [q.op for i, q in enumerate(self.quantizers) if i != self.output_index]


def _images(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def calibrate_w8a8(model: nn.Module, batches: Iterable[Any]) -> W8A8Model:
    """The w8a8 model of `model` (left untouched), every activation range observed on `batches` (images, or
    (images, labels) pairs; one pass, nothing else is read)."""
    quantized = W8A8Model(model).eval()
    device = next(quantized.parameters()).device
    for batch in batches:
        quantized(_images(batch).to(device))
    return quantized.freeze()


def int8_activation_bytes(fp32_bytes: float) -> int:
    """Bytes of activations stored as int8, from their fp32 size (one byte per value)."""
    return math.ceil(fp32_bytes / 4)
