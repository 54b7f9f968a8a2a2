"""The storage formats of parameter tensors: one registry that footprint, compare, report and the CLI read.

A format stores each tensor's values with a :class:`ValueCodec` (fp32, fp16, ...) in the smallest of its
layouts, dense included (ties: dense first, then the listed order). Layouts, per tensor viewed as a
(shape[0] x numel/shape[0]) matrix; 1-D/0-D tensors and integer tensors are always dense:

- ``dense``: numel values.
- ``csr``: nnz values + nnz column indices + (rows + 1) row pointers. Column indices use the smallest
  unsigned type holding cols - 1 (uint8 up to 256 columns, uint16 up to 65 536, uint32 beyond), row
  pointers the smallest unsigned type holding nnz (uint8 up to 255, uint16 up to 65 535, uint32 beyond).
- ``bitmask``: nnz values + ceil(numel / 8) bytes of 1-bit mask.

Adding a format is one entry in ``FORMATS``, e.g. ``StorageFormat("csr_int8", "CSR int8", INT8, ("csr",))``
with a codec ``INT8``; it then gets the metrics ``footprint_csr_int8_bytes`` and ``file_csr_int8_bytes``,
a column in footprint.json rows, a written file, a bar in the figure, and a place in compare and report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class ValueCodec:
    """How the stored (non-zero) values are written; ``activation_metric``: the activation peak that goes
    with parameters stored this way."""

    name: str
    dtype: np.dtype
    activation_metric: str

    def nbytes(self, count: int) -> int:
        return count * self.dtype.itemsize

    def arrays(self, key: str, values: np.ndarray) -> dict[str, np.ndarray]:
        return {key: values.astype(self.dtype)}


FP32 = ValueCodec("fp32", np.dtype(np.float32), "activation_peak_fp32_bytes")
FP16 = ValueCodec("fp16", np.dtype(np.float16), "activation_peak_fp16_bytes")


def sparse_capable(t: torch.Tensor) -> bool:
    """Only floating-point tensors with >= 2 dims and elements may take a sparse layout."""
    return t.is_floating_point() and t.dim() >= 2 and t.numel() > 0


@dataclass(frozen=True)
class TensorStats:
    """What a layout's size depends on; rows and cols of the matrix view are 0 for a dense-only tensor."""

    numel: int
    nnz: int
    rows: int
    cols: int
    floating: bool
    itemsize: int
    sparse_capable: bool

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorStats:
        sparse = sparse_capable(t)
        rows, cols = matrix_shape(tuple(t.shape)) if sparse else (0, 0)
        nnz = int(torch.count_nonzero(t))
        return cls(t.numel(), nnz, rows, cols, t.is_floating_point(), t.element_size(), sparse)


def uint_dtype(max_value: int) -> np.dtype:
    """Smallest unsigned integer dtype that holds every value in [0, max_value]."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"value {max_value} does not fit in 64 bits")


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    rows = shape[0]
    return rows, math.prod(shape) // rows if rows else 0


def index_dtype(cols: int) -> np.dtype:
    """CSR column index type."""
    return uint_dtype(max(cols - 1, 0))


def _dense_size(s: TensorStats, codec: ValueCodec) -> int:
    return codec.nbytes(s.numel)


def _csr_size(s: TensorStats, codec: ValueCodec) -> int:
    return codec.nbytes(s.nnz) + s.nnz * index_dtype(s.cols).itemsize + (s.rows + 1) * uint_dtype(s.nnz).itemsize


def _bitmask_size(s: TensorStats, codec: ValueCodec) -> int:
    return codec.nbytes(s.nnz) + (s.numel + 7) // 8


def _dense_arrays(name: str, a: np.ndarray, codec: ValueCodec) -> dict[str, np.ndarray]:
    return codec.arrays(name, a)


def _csr_arrays(name: str, a: np.ndarray, codec: ValueCodec) -> dict[str, np.ndarray]:
    m = a.reshape(matrix_shape(a.shape))
    r, c = np.nonzero(m)
    pointers = np.zeros(m.shape[0] + 1, dtype=uint_dtype(len(c)))
    np.cumsum(np.count_nonzero(m, axis=1), out=pointers[1:])
    values = codec.arrays(f"{name}.values", m[r, c])
    return values | {f"{name}.col_indices": c.astype(index_dtype(m.shape[1])), f"{name}.row_ptr": pointers}


def _bitmask_arrays(name: str, a: np.ndarray, codec: ValueCodec) -> dict[str, np.ndarray]:
    flat = a.reshape(-1)
    mask = flat != 0
    return codec.arrays(f"{name}.values", flat[mask]) | {f"{name}.mask": np.packbits(mask)}


@dataclass(frozen=True)
class Layout:
    """Where the values sit: its byte count per tensor and the arrays that store one."""

    size: Callable[[TensorStats, ValueCodec], int]
    arrays: Callable[[str, np.ndarray, ValueCodec], dict[str, np.ndarray]]


LAYOUTS: dict[str, Layout] = {
    "dense": Layout(_dense_size, _dense_arrays),
    "csr": Layout(_csr_size, _csr_arrays),
    "bitmask": Layout(_bitmask_size, _bitmask_arrays),
}


def encode(name: str, t: torch.Tensor, layout: str, codec: ValueCodec) -> dict[str, np.ndarray]:
    """The arrays that store ``t`` in ``layout`` ('dense', 'csr', 'bitmask') with ``codec`` values."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown storage layout {layout!r}; known: {', '.join(LAYOUTS)}")
    a = t.detach().numpy()
    return LAYOUTS[layout].arrays(name, a, codec) if t.is_floating_point() else {name: a}


@dataclass(frozen=True)
class StorageFormat:
    """One way to store every parameter tensor.

    ``name`` keys the per-tensor rows of footprint.json and makes the metric ``footprint_<name>_bytes``;
    ``file_key`` (default ``name``) names the written file ``params_<file_key>.npz`` and its metric
    ``file_<file_key>_bytes``; ``layout_field`` (default ``<name>_as`` when there are sparse layouts) is the
    row field holding the layout each tensor took.
    """

    name: str
    label: str
    codec: ValueCodec
    sparse_layouts: tuple[str, ...] = ()
    file_key: str = ""
    layout_field: str = ""

    @property
    def metric(self) -> str:
        return f"footprint_{self.name}_bytes"

    @property
    def file_name(self) -> str:
        return self.file_key or self.name

    @property
    def file_metric(self) -> str:
        return f"file_{self.file_name}_bytes"

    @property
    def row_layout_field(self) -> str | None:
        if not self.sparse_layouts:
            return None
        return self.layout_field or f"{self.name}_as"

    @property
    def is_choice(self) -> bool:
        """Tensors may each take a different sparse layout (a "best" format)."""
        return len(self.sparse_layouts) > 1

    def tensor_bytes(self, stats: TensorStats) -> tuple[int, str]:
        """Bytes of one tensor in this format, and the layout it takes (the smallest; ties: dense first)."""
        if not stats.floating:
            return stats.numel * stats.itemsize, "dense"
        layouts = ("dense", *self.sparse_layouts) if stats.sparse_capable else ("dense",)
        sizes = {layout: LAYOUTS[layout].size(stats, self.codec) for layout in layouts}
        chosen = min(layouts, key=sizes.__getitem__)  # min keeps the first of equal sizes
        return sizes[chosen], chosen

    def write_file(
        self, tensors: list[tuple[str, torch.Tensor]], rows: list[dict[str, Any]], directory: Path
    ) -> dict[str, Any]:
        """``params_<file_key>.npz`` (uncompressed np.savez) of exactly the arrays :meth:`tensor_bytes` counts,
        each tensor in the layout its row names."""
        field = self.row_layout_field
        arrays: dict[str, np.ndarray] = {}
        for (name, t), row in zip(tensors, rows, strict=True):
            arrays |= encode(name, t, row[field] if field else "dense", self.codec)
        return write_npz(directory / f"params_{self.file_name}.npz", arrays)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    np.savez(path, **arrays)
    payload = sum(a.nbytes for a in arrays.values())
    size = path.stat().st_size
    return {
        "path": path.name,
        "file_bytes": size,
        "payload_bytes": payload,
        "overhead_bytes": size - payload,
        "arrays": len(arrays),
    }


def _registry(*formats: StorageFormat) -> dict[str, StorageFormat]:
    names = [f.name for f in formats]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate storage format names in {names}")
    return {f.name: f for f in formats}


# The metric and file names of these six are a contract (logged metrics, footprint.json rows): keep them.
FORMATS: dict[str, StorageFormat] = _registry(
    StorageFormat("fp32", "fp32", FP32),
    StorageFormat("fp16", "fp16", FP16),
    StorageFormat("csr_fp32", "CSR fp32", FP32, ("csr",)),
    StorageFormat("csr_fp16", "CSR fp16", FP16, ("csr",)),
    StorageFormat("bitmask_fp16", "bitmask fp16", FP16, ("bitmask",)),
    StorageFormat("best", "best fp16", FP16, ("csr", "bitmask"), file_key="best_fp16", layout_field="chosen"),
)


def storage_metrics() -> tuple[str, ...]:
    """``footprint_<name>_bytes`` of every registered format, in registry order."""
    return tuple(f.metric for f in FORMATS.values())
