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
The tag t is the precision, except fp16 -> "fp16_folded": footprint_fp16_bytes etc. are footprint's
metrics, which count BatchNorm's four vectors unfolded and every tensor (biases too) in fp16, whereas here
BN is folded into one fp32 bias per channel (on ResNet-20 the folded fp16 bytes are ~2.7 KB smaller).

With `calibration_batches` and "int8" among the precisions, also the w8a8 model (int8 weights, int8
activations calibrated on those batches only): ``<key>_w8a8``, ``activation_peak_int8_bytes`` (one byte per
activation value of the fp32 peak) and ``total_w8a8_bytes`` = footprint_best_int8_bytes + that peak.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from .activations import calibrate_w8a8, int8_activation_bytes
from .formats import quantized_bytes
from .weights import PRECISIONS, quantize_weights, validate_precision

Evaluate = Callable[[nn.Module], dict[str, float]]


# footprint_fp16_bytes, footprint_csr_fp16_bytes and footprint_bitmask_fp16_bytes already name
# prune_tracker.footprint's metrics (BN unfolded, every tensor fp16): the folded ones get their own tag
BYTES_TAG = {"fp16": "fp16_folded"}


def bytes_tag(precision: str) -> str:
    """The precision's tag in byte metric names: fp16_folded, int8, int4."""
    return BYTES_TAG.get(validate_precision(precision), precision)


def byte_metrics(sizes: dict[str, Any], precision: str) -> dict[str, float]:
    """The four footprint_*_<tag>_bytes metrics (tag: `bytes_tag`) from `quantized_bytes`' rows and other bytes."""
    rows, other, tag = sizes["tensors"], sizes["other_bytes"], bytes_tag(precision)
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
        metrics |= byte_metrics(quantized_bytes(quantized), precision)
        del quantized
    if w8a8:
        metrics |= _suffixed(evaluate(calibrate_w8a8(model, calibration_batches())), "w8a8")
        activations = int8_activation_bytes(activation_peak_fp32_bytes)
        metrics["activation_peak_int8_bytes"] = float(activations)
        metrics["total_w8a8_bytes"] = metrics["footprint_best_int8_bytes"] + activations
    return metrics
