"""Accuracy and bytes of a model at each deployment precision (pure: no tracking, no data of its own).

For each precision p the model is BN-folded and its Conv2d / Linear weights quantised once
(`quantize_weights`); `evaluate` runs on that fake-quantised model and the bytes come from the same
quantised weights (`formats` rules: fp16 scales counted, folded biases and other tensors dense fp32):

- ``<key>_<p>``: every value `evaluate` returns (e.g. test_accuracy_int8, val_accuracy_int8);
- ``footprint_<t>_bytes``: every weight dense;
- ``footprint_csr_<t>_bytes`` / ``footprint_bitmask_<t>_bytes``: each weight in CSR / bitmask, or dense where
  that is smaller (ties dense), as footprint's csr_fp16 / bitmask_fp16 formats;
- ``footprint_best_<t>_bytes``: each weight in its smallest of dense / CSR / bitmask (= the container's
  data bytes, `quantized_bytes`' total).
The tag t is the precision (int8, int4). fp16 gets its accuracies only: its bytes are footprint's one fp16
figure family (footprint_fp16_bytes, footprint_best_bytes, ...: BatchNorm unfolded, every tensor fp16), so one
name stands for one figure. Stores written before that also hold ``footprint_*_fp16_folded_bytes`` (BN folded,
~2.7 KB smaller on ResNet-20) and the alias ``footprint_best_fp16_bytes``; compare reads them as before.

With `calibration_batches` and "int8" among the precisions, also the w8a8 model (int8 weights, every activation
tensor int8, ranges calibrated on those batches only: `activations`): ``<key>_w8a8``, ``activation_peak_int8_bytes``
(one byte per activation value of the fp32 peak, which counts the same tensors the simulation quantises) and
``total_w8a8_bytes`` = footprint_best_int8_bytes + that peak.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from .activations import calibrate_w8a8, int8_activation_bytes
from .formats import quantized_bytes
from .weights import PRECISIONS, quantize_weights, validate_precision

Evaluate = Callable[[nn.Module], dict[str, float]]


def byte_metrics(sizes: dict[str, Any], precision: str) -> dict[str, float]:
    """The four footprint_*_<precision>_bytes metrics from `quantized_bytes`' rows and other bytes."""
    rows, other, tag = sizes["tensors"], sizes["other_bytes"], validate_precision(precision)
    return {
        f"footprint_{tag}_bytes": float(sum(r["dense"] for r in rows) + other),
        f"footprint_bitmask_{tag}_bytes": float(sum(min(r["dense"], r["bitmask"]) for r in rows) + other),
        f"footprint_csr_{tag}_bytes": float(sum(min(r["dense"], r["csr"]) for r in rows) + other),
        f"footprint_best_{tag}_bytes": float(sizes["total_bytes"]),
    }


def _suffixed(metrics: dict[str, float], suffix: str) -> dict[str, float]:
    return {f"{key}_{suffix}": float(value) for key, value in metrics.items()}


def validate_precisions(precisions: Iterable[str]) -> tuple[str, ...]:
    """The distinct precisions, each checked by `validate_precision`, in PRECISIONS order."""
    chosen = {validate_precision(p) for p in precisions}
    return tuple(p for p in PRECISIONS if p in chosen)


def measure_precisions(
    model: nn.Module,
    precisions: Iterable[str],
    evaluate: Evaluate,
    calibration_batches: Callable[[], Iterable[Any]] | None = None,
    activation_peak_fp32_bytes: float | None = None,
) -> dict[str, float]:
    """Accuracy (via `evaluate`) and bytes of `model` at each precision; see the module docstring.
    `calibration_batches()` yields (images, labels) pairs or images and is called once, for w8a8 only;
    `activation_peak_fp32_bytes` is then required. The caller's model is left untouched."""
    chosen = validate_precisions(precisions)
    w8a8 = calibration_batches is not None and "int8" in chosen
    if w8a8 and activation_peak_fp32_bytes is None:
        raise ValueError("measure_precisions: w8a8 needs activation_peak_fp32_bytes")
    metrics: dict[str, float] = {}
    for precision in chosen:
        quantized = quantize_weights(model, precision)
        metrics |= _suffixed(evaluate(quantized.model), precision)
        if precision != "fp16":  # fp16 bytes: footprint's metrics (see the module docstring)
            metrics |= byte_metrics(quantized_bytes(quantized), precision)
        del quantized
    if w8a8:
        metrics |= _suffixed(evaluate(calibrate_w8a8(model, calibration_batches())), "w8a8")
        activations = int8_activation_bytes(activation_peak_fp32_bytes)
        metrics["activation_peak_int8_bytes"] = float(activations)
        metrics["total_w8a8_bytes"] = metrics["footprint_best_int8_bytes"] + activations
    return metrics
