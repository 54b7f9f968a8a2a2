"""Exact bytes of a quantised weight in each storage format (pure functions).

For a weight of shape (out, ...) viewed as an (out x numel/out) matrix, with `nnz` non-zero levels:
- values: int8 1 byte each; int4 two per byte (element 2i in the low nibble, 2i+1 in the high nibble,
  two's complement; an odd count rounds up); fp16 2 bytes each.
- scales: out x 2 bytes (fp16) for int8 / int4, none for fp16. Counted in every format.
- dense   = values(numel) + scales
- bitmask = values(nnz) + ceil(numel / 8) mask bytes + scales
- csr     = values(nnz) + nnz column indices + (out + 1) row pointers + scales; the index-width rule of the
            format registry (prune_tracker.footprint.formats): indices in the smallest unsigned type holding
            cols - 1, pointers in the smallest holding nnz
- best    = the smallest, ties in the order dense, csr, bitmask (as footprint.storage).
Biases (the BN-folded ones included) and any other tensor are stored dense fp32 (4 bytes each): deployment
keeps fp32 / int32 accumulators, and there is only one bias per output channel.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..footprint.formats import index_dtype, uint_dtype
from .weights import BITS, QuantizedModel, QuantizedTensor, quantize_weights, validate_precision

FORMATS = ("dense", "csr", "bitmask")
OTHER_VALUE_BYTES = 4


def csr_index_bytes(rows: int, cols: int, nnz: int) -> int:
    """Column indices + row pointers of an (rows x cols) CSR matrix with nnz entries."""
    return nnz * index_dtype(cols).itemsize + (rows + 1) * uint_dtype(nnz).itemsize


def value_bytes(count: int, precision: str) -> int:
    """Bytes of `count` packed values."""
    return (count * BITS[validate_precision(precision)] + 7) // 8


def scale_bytes(out_channels: int, precision: str) -> int:
    return 0 if validate_precision(precision) == "fp16" else 2 * out_channels


def format_bytes(shape: tuple[int, ...], nnz: int, precision: str) -> dict[str, int]:
    """Bytes of a weight of `shape` with `nnz` non-zeros in every format, scales included."""
    numel = math.prod(shape)
    rows = shape[0]
    cols = numel // rows if rows else 0
    scales = scale_bytes(rows, precision)
    return {
        "dense": value_bytes(numel, precision) + scales,
        "csr": value_bytes(nnz, precision) + csr_index_bytes(rows, cols, nnz) + scales,
        "bitmask": value_bytes(nnz, precision) + (numel + 7) // 8 + scales,
    }


def best_format(sizes: dict[str, int]) -> str:
    return min(FORMATS, key=lambda f: (sizes[f], FORMATS.index(f)))


def tensor_bytes_row(name: str, tensor: QuantizedTensor) -> dict[str, Any]:
    """Sizes of one quantised weight in every format, and the format it is stored in."""
    shape = tuple(tensor.values.shape)
    nnz = int((tensor.values != 0).sum())
    sizes = format_bytes(shape, nnz, tensor.precision)
    chosen = best_format(sizes)
    return {"name": name, "shape": list(shape), "numel": math.prod(shape), "nonzeros": nnz,
            "scale_bytes": scale_bytes(shape[0], tensor.precision), **sizes, "chosen": chosen,
            "best": sizes[chosen]}


def quantized_bytes(quantized: QuantizedModel) -> dict[str, Any]:
    """Per-weight rows and totals (bytes) of a quantised model as the container stores it."""
    rows = [tensor_bytes_row(name, t) for name, t in quantized.weights.items()]
    other = sum(t.numel() * OTHER_VALUE_BYTES for t in quantized.others.values())
    weights = sum(r["best"] for r in rows)
    return {"precision": quantized.precision, "tensors": rows, "weight_bytes": weights,
            "scale_bytes": sum(r["scale_bytes"] for r in rows), "other_bytes": other, "total_bytes": weights + other}


def model_bytes(model: nn.Module, precision: str) -> dict[str, Any]:
    """`quantized_bytes` of `model` after BN folding and weight quantisation at `precision`."""
    return quantized_bytes(quantize_weights(model, precision))
