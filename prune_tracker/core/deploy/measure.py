"""The deployment precision `ort_int8`, measured (pure: no tracking, no data of its own).

The model is exported to ONNX (`export`), quantised statically by ONNX Runtime (`ort_int8`: QDQ, per-channel int8
weights, uint8 activations calibrated on the training batches given), and evaluated by ONNX Runtime through the
caller's `evaluate` (so splits and flip TTA are those of the PyTorch evaluation). Logged figures:

- ``<key>_ort_int8`` for every value `evaluate` returns (``val_accuracy_ort_int8``, ``test_accuracy_ort_int8``);
- ``file_ort_int8_bytes`` / ``file_ort_fp32_bytes``: the .onnx files (what the runtime loads and holds: every tensor
  dense, so an unstructured-sparse model's file is as large as the dense model's);
- ``latency_ms_<runtime>``, ``latency_ms_<runtime>_batch128`` and their ``_iqr`` for ort_int8, ort_fp32 and
  torch_fp32 (the eager PyTorch model as the lab runs it, BatchNorm unfolded), measured the same way (`latency`);
- ``ort_int8_calibration_images``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .export import export_onnx, file_bytes
from .latency import latency_metrics, ort_call, torch_call
from .ort_int8 import quantize_int8
from .precisions import ORT_INT8
from .runtime import OrtModule, session

INT8_FILE, FP32_FILE = "model_ort_int8.onnx", "model_ort_fp32.onnx"

Evaluate = Callable[[nn.Module], dict[str, float]]


@dataclass(frozen=True)
class Deployment:
    """The figures of `measure_ort_int8` and the quantised model's file (`path`, in the caller's folder)."""

    metrics: dict[str, float]
    path: Path


def measure_ort_int8(model: nn.Module, input_shape: tuple[int, ...], calibration: Iterable[np.ndarray],
                     evaluate: Evaluate, folder: Path, label: str = "the model",
                     min_run_time: float | None = None) -> Deployment:
    """See the module docstring. `calibration` yields float32 NCHW training batches, normalised as the model expects;
    `folder` receives both .onnx files; `label` names the model in an ExportError. The caller's model is untouched."""
    fp32_path = export_onnx(model, input_shape, Path(folder) / FP32_FILE, label)
    int8_path = Path(folder) / INT8_FILE
    images = quantize_int8(fp32_path, int8_path, calibration)
    metrics = {f"{key}_{ORT_INT8}": float(value) for key, value in evaluate(OrtModule(int8_path)).items()}
    metrics |= {"file_ort_int8_bytes": float(file_bytes(int8_path)),
                "file_ort_fp32_bytes": float(file_bytes(fp32_path)), "ort_int8_calibration_images": float(images)}
    eager = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
    for runtime, make_call in (("ort_int8", ort_call(session(int8_path))), ("ort_fp32", ort_call(session(fp32_path))),
                               ("torch_fp32", torch_call(eager))):
        metrics |= latency_metrics(runtime, make_call, input_shape, min_run_time)
    return Deployment(metrics, int8_path)
