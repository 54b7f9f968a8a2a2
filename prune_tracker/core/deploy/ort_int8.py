"""Static int8 quantisation by ONNX Runtime: QDQ format, per-channel symmetric int8 weights, per-tensor uint8
activations whose ranges (MinMax) are calibrated on the batches given, which must be training images: validation
and test rank and report the result."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static

from .export import INPUT_NAME


class BatchReader(CalibrationDataReader):
    """Hands float32 NCHW batches to ONNX Runtime's calibrator; `images_seen` counts the images it handed over."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self._batches: Iterator[np.ndarray] = iter(batches)
        self.images_seen = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.images_seen += len(batch)
        return {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, calibration: Iterable[np.ndarray]) -> int:
    """Quantise the fp32 ONNX model at `fp32_path` into `int8_path` (one file); returns the number of calibration
    images read (ValueError when `calibration` is empty)."""
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ValueError("ONNX Runtime int8 calibration needs at least one batch of training images")
    reader = BatchReader(itertools.chain([first], batches))
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))  # shape inference + graph optimisation, as ORT advises
        quantize_static(str(prepared), str(int8_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    return reader.images_seen
