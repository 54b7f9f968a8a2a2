"""Parameter storage: bytes per tensor in each format, and the same formats written to real files.

Formats (per tensor; 1-D/0-D tensors and integer tensors are always stored dense):
- dense fp32 / fp16: numel * 4 / numel * 2.
- CSR (fp32 or fp16 values): the tensor viewed as a (shape[0] x numel/shape[0]) matrix;
  nnz values + nnz column indices + (rows + 1) row pointers. Column indices use the smallest unsigned type
  holding cols - 1 (uint8 up to 256 columns, uint16 up to 65 536, uint32 beyond), row pointers the
  smallest unsigned type holding nnz. A tensor whose CSR is larger than dense is stored dense.
- bitmask fp16: nnz fp16 values + ceil(numel / 8) bytes of 1-bit mask; larger than dense -> dense.
- best fp16: per tensor the smallest of dense fp16 / CSR fp16 / bitmask fp16 (ties: dense, csr, bitmask).

Files are `np.savez` archives (uncompressed) of exactly the arrays the formulas count, so
file size = computed bytes + container overhead (zip entry + npy header, ~230 B + 2 x name per array).
"""

from __future__ import annotations

import gzip
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

FP16_FORMATS = ("dense", "csr", "bitmask")
# file key -> (row field naming the per-tensor format, value dtype)
FILE_LAYOUTS: dict[str, tuple[str | None, type]] = {
    "fp32": (None, np.float32),
    "fp16": (None, np.float16),
    "csr_fp32": ("csr_fp32_as", np.float32),
    "csr_fp16": ("csr_fp16_as", np.float16),
    "bitmask_fp16": ("bitmask_fp16_as", np.float16),
    "best_fp16": ("chosen", np.float16),
}


def uint_dtype(max_value: int) -> np.dtype:
    """Smallest unsigned integer dtype that holds every value in [0, max_value]."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"value {max_value} does not fit in 64 bits")


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    rows = shape[0]
    return rows, math.prod(shape) // rows if rows else 0


def csr_bytes(rows: int, cols: int, nnz: int, value_bytes: int) -> int:
    index = uint_dtype(max(cols - 1, 0)).itemsize
    pointer = uint_dtype(nnz).itemsize
    return nnz * (value_bytes + index) + (rows + 1) * pointer


def bitmask_bytes(numel: int, nnz: int, value_bytes: int = 2) -> int:
    return nnz * value_bytes + (numel + 7) // 8


def _sparse_capable(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.dim() >= 2 and t.numel() > 0


def tensor_row(name: str, t: torch.Tensor) -> dict[str, Any]:
    """Sizes of one tensor in every format, and the fp16 format it is best stored in."""
    numel, nnz = t.numel(), int(torch.count_nonzero(t))
    row: dict[str, Any] = {"name": name, "shape": list(t.shape), "numel": numel, "nonzeros": nnz}
    if not t.is_floating_point():
        size = numel * t.element_size()
        return row | {
            "fp32": size,
            "fp16": size,
            "csr_fp32": size,
            "csr_fp16": size,
            "bitmask_fp16": size,
            "csr_fp32_as": "dense",
            "csr_fp16_as": "dense",
            "bitmask_fp16_as": "dense",
            "index_dtype": None,
            "rowptr_dtype": None,
            "chosen": "dense",
            "best": size,
        }
    row |= {"fp32": 4 * numel, "fp16": 2 * numel}
    sparse = _sparse_capable(t)
    rows, cols = matrix_shape(tuple(t.shape)) if sparse else (0, 0)
    for key, dense, raw in (
        ("csr_fp32", 4 * numel, csr_bytes(rows, cols, nnz, 4) if sparse else None),
        ("csr_fp16", 2 * numel, csr_bytes(rows, cols, nnz, 2) if sparse else None),
        ("bitmask_fp16", 2 * numel, bitmask_bytes(numel, nnz) if sparse else None),
    ):
        encoded = raw is not None and raw < dense
        row[key] = raw if encoded else dense
        row[f"{key}_as"] = key.split("_")[0] if encoded else "dense"
    row["index_dtype"] = uint_dtype(max(cols - 1, 0)).name if sparse else None
    row["rowptr_dtype"] = uint_dtype(nnz).name if sparse else None
    candidates = {"dense": row["fp16"], "csr": row["csr_fp16"], "bitmask": row["bitmask_fp16"]}
    row["chosen"] = min(FP16_FORMATS, key=lambda f: (candidates[f], FP16_FORMATS.index(f)))
    row["best"] = candidates[row["chosen"]]
    return row


def encode(name: str, t: torch.Tensor, fmt: str, value_dtype: type) -> dict[str, np.ndarray]:
    """The arrays that store `t` in `fmt` ('dense', 'csr', 'bitmask') with values as `value_dtype`."""
    a = t.detach().numpy()
    if not t.is_floating_point():
        return {name: a}
    if fmt == "dense":
        return {name: a.astype(value_dtype)}
    if fmt == "csr":
        m = a.reshape(matrix_shape(a.shape))
        r, c = np.nonzero(m)
        pointers = np.zeros(m.shape[0] + 1, dtype=uint_dtype(len(c)))
        np.cumsum(np.count_nonzero(m, axis=1), out=pointers[1:])
        return {
            f"{name}.values": m[r, c].astype(value_dtype),
            f"{name}.col_indices": c.astype(uint_dtype(max(m.shape[1] - 1, 0))),
            f"{name}.row_ptr": pointers,
        }
    if fmt == "bitmask":
        flat = a.reshape(-1)
        mask = flat != 0
        return {f"{name}.values": flat[mask].astype(value_dtype), f"{name}.mask": np.packbits(mask)}
    raise ValueError(f"unknown storage format {fmt!r}; known: {', '.join(FP16_FORMATS)}")


def decode(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `encode` (values as stored), given the tensor's shape; used to check the files."""
    if name in arrays:
        return arrays[name].reshape(shape)
    values = arrays[f"{name}.values"]
    if f"{name}.mask" in arrays:
        mask = np.unpackbits(arrays[f"{name}.mask"], count=math.prod(shape)).astype(bool)
        out = np.zeros(math.prod(shape), dtype=values.dtype)
        out[mask] = values
        return out.reshape(shape)
    pointers, cols = arrays[f"{name}.row_ptr"].astype(np.int64), arrays[f"{name}.col_indices"]
    m = np.zeros(matrix_shape(shape), dtype=values.dtype)
    m[np.repeat(np.arange(len(pointers) - 1), np.diff(pointers)), cols] = values
    return m.reshape(shape)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
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


def _torch_csr(tensors: list[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors:
        if _sparse_capable(t):
            csr = t.detach().half().reshape(matrix_shape(tuple(t.shape))).to_sparse_csr()
            # rebuild from copies: to_sparse_csr()'s col_indices is a view of a 2 x nnz int64 buffer,
            # which torch.save would write whole
            out[name] = torch.sparse_csr_tensor(csr.crow_indices().clone(), csr.col_indices().clone(),
                                                csr.values().clone(), csr.shape)
        else:
            out[name] = t.detach().half() if t.is_floating_point() else t.detach()
    return out


def write_files(
    tensors: list[tuple[str, torch.Tensor]], rows: list[dict[str, Any]], directory: Path
) -> dict[str, dict[str, Any]]:
    """Write every layout of FILE_LAYOUTS, a gzip of the fp16 file and a torch sparse-CSR file
    (torch.save of a dict: >= 2-D tensors as torch sparse CSR with fp16 values and int64 indices)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, (field, value_dtype) in FILE_LAYOUTS.items():
        arrays: dict[str, np.ndarray] = {}
        for (name, t), row in zip(tensors, rows, strict=True):
            arrays.update(encode(name, t, row[field] if field else "dense", value_dtype))
        files[key] = _write_npz(directory / f"params_{key}.npz", arrays)
    gz_path = directory / "params_fp16.npz.gz"
    gz_path.write_bytes(gzip.compress((directory / "params_fp16.npz").read_bytes(), mtime=0))
    files["fp16_gzip"] = {"path": gz_path.name, "file_bytes": gz_path.stat().st_size}
    torch_path = directory / "params_torch_csr_fp16.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        torch.save(_torch_csr(tensors), torch_path)
    files["torch_csr"] = {"path": torch_path.name, "file_bytes": torch_path.stat().st_size}
    return files
