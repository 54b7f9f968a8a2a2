"""Parameter storage: each tensor's bytes in every registered format (formats.FORMATS), and real files.

Files are `np.savez` archives (uncompressed) of exactly the arrays the formulas count, so
file size = computed bytes + container overhead (zip entry + npy header, ~230 B + 2 x name per array).
Besides one file per format: a gzip of the fp16 file and torch's own sparse CSR (`torch.save`).
"""

from __future__ import annotations

import gzip
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .formats import FORMATS, TensorStats, index_dtype, matrix_shape, sparse_capable, uint_dtype


def tensor_row(name: str, t: torch.Tensor) -> dict[str, Any]:
    """Sizes of one tensor in every format, the layout each format stores it in, and its CSR index types."""
    stats = TensorStats.of(t)
    row: dict[str, Any] = {"name": name, "shape": list(t.shape), "numel": stats.numel, "nonzeros": stats.nnz}
    for fmt in FORMATS.values():
        row[fmt.name], layout = fmt.tensor_bytes(stats)
        if fmt.row_layout_field:
            row[fmt.row_layout_field] = layout
    sparse = stats.sparse_capable
    row["index_dtype"] = index_dtype(stats.cols).name if sparse else None
    row["rowptr_dtype"] = uint_dtype(stats.nnz).name if sparse else None
    return row


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


def _torch_csr(tensors: list[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors:
        if sparse_capable(t):
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
    """Write one file per registered format, a gzip of the fp16 file and a torch sparse-CSR file
    (torch.save of a dict: >= 2-D tensors as torch sparse CSR with fp16 values and int64 indices)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {fmt.file_name: fmt.write_file(tensors, rows, directory) for fmt in FORMATS.values()}
    gz_path = directory / "params_fp16.npz.gz"
    gz_path.write_bytes(gzip.compress((directory / "params_fp16.npz").read_bytes(), mtime=0))
    files["fp16_gzip"] = {"path": gz_path.name, "file_bytes": gz_path.stat().st_size}
    torch_path = directory / "params_torch_csr_fp16.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        torch.save(_torch_csr(tensors), torch_path)
    files["torch_csr"] = {"path": torch_path.name, "file_bytes": torch_path.stat().st_size}
    return files
