"""Deployable file: one safetensors file, no pickle, holding a single uint8 tensor `data` (every tensor
packed back to back, little-endian) and string metadata:
- format: "prune-tracker-quant/2"; precision: fp16 / int8 / int4;
- header: base64 of the zlib-compressed JSON {"spec": ..., "index": ...}: the architecture spec
  (prune_tracker.core.models.architecture_spec) to rebuild the model, and the list of [encoding, non-zeros] per
  Conv2d / Linear weight in module order (encoding dense / csr / bitmask, the smallest as in `formats`).
  Names and shapes are those of the model rebuilt from the spec and BN-folded. Compressed, the header of a
  ResNet-20 is ~0.6 KB instead of ~3.4 KB (plain JSON, escaped inside safetensors' JSON header), ~1 % of
  its 80 %-sparse int4 weights (~60 KB); the reader checks that the layer count and the byte count agree.
`data` holds the weights in that order, then every other floating tensor of the folded model's state_dict
(BN-folded biases, ...) as fp32, in state_dict order.
Sections per weight: dense: values; bitmask: mask (np.packbits order) then values; csr: row pointers,
column indices, values; then the fp16 scales (int8 / int4). `data` is exactly `formats.quantized_bytes`'
total.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..footprint.formats import index_dtype, uint_dtype
from ..models import build_from_spec
from .fold import fold_batch_norm
from .formats import quantized_bytes, value_bytes
from .weights import QuantizedTensor, quantize_weights, quantized_layers, validate_precision

FORMAT = "prune-tracker-quant/2"


def pack_values(values: np.ndarray, precision: str) -> np.ndarray:
    """1-D levels (int8 / int4) or fp16 values -> uint8 bytes; int4 two per byte, low nibble first."""
    if precision == "fp16":
        return values.astype("<f2").view(np.uint8)
    if precision == "int8":
        return values.astype(np.int8).view(np.uint8)
    nibbles = (values.astype(np.int16) & 0xF).astype(np.uint8)
    if len(nibbles) % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return nibbles[0::2] | (nibbles[1::2] << 4)


def unpack_values(data: np.ndarray, count: int, precision: str) -> np.ndarray:
    """Inverse of `pack_values`: int8 levels or fp16 values."""
    if precision == "fp16":
        return data.view("<f2")[:count]
    if precision == "int8":
        return data.view(np.int8)[:count]
    nibbles = np.stack([data & 0xF, data >> 4], axis=1).reshape(-1)[:count].astype(np.int8)
    return (nibbles ^ 8) - 8  # sign-extend 4-bit two's complement


def _matrix(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1)


def _encode_values(values: np.ndarray, encoding: str, precision: str) -> list[np.ndarray]:
    if encoding == "dense":
        return [pack_values(values.reshape(-1), precision)]
    if encoding == "bitmask":
        flat = values.reshape(-1)
        return [np.packbits(flat != 0), pack_values(flat[flat != 0], precision)]
    m = _matrix(values)
    rows, cols = np.nonzero(m)
    pointers = np.zeros(m.shape[0] + 1, dtype=uint_dtype(len(cols)).newbyteorder("<"))
    np.cumsum(np.count_nonzero(m, axis=1), out=pointers[1:])
    index = cols.astype(index_dtype(m.shape[1]).newbyteorder("<"))
    return [pointers.view(np.uint8), index.view(np.uint8), pack_values(m[rows, cols], precision)]


def encode_weight(tensor: QuantizedTensor, encoding: str) -> list[np.ndarray]:
    """uint8 sections of one quantised weight in `encoding`, scales last."""
    values = tensor.values.cpu().numpy()
    sections = _encode_values(values, encoding, tensor.precision)
    if tensor.scales is not None:
        sections.append(tensor.scales.cpu().numpy().astype("<f2").view(np.uint8))
    return sections


class ByteReader:
    """Sequential reader of the sections of a `data` buffer."""

    def __init__(self, data: np.ndarray):
        self.data, self.offset = data, 0

    def take(self, count: int, dtype: Any = np.uint8) -> np.ndarray:
        dtype = np.dtype(dtype).newbyteorder("<")
        size = count * dtype.itemsize
        if self.offset + size > len(self.data):
            raise ValueError("quantised file is truncated: its index asks for more bytes than it holds")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk.view(dtype)


def _decode_values(reader: ByteReader, shape: tuple[int, ...], encoding: str, nnz: int, precision: str) -> np.ndarray:
    numel = math.prod(shape)
    if encoding == "dense":
        return unpack_values(reader.take(value_bytes(numel, precision)), numel, precision).reshape(shape)
    dtype = np.float16 if precision == "fp16" else np.int8
    out = np.zeros(numel, dtype=dtype)
    if encoding == "bitmask":
        mask = np.unpackbits(reader.take((numel + 7) // 8), count=numel).astype(bool)
        out[mask] = unpack_values(reader.take(value_bytes(nnz, precision)), nnz, precision)
        return out.reshape(shape)
    rows, cols = shape[0], numel // shape[0]
    pointers = reader.take(rows + 1, uint_dtype(nnz)).astype(np.int64)
    index = reader.take(nnz, index_dtype(cols)).astype(np.int64)
    values = unpack_values(reader.take(value_bytes(nnz, precision)), nnz, precision)
    out.reshape(rows, cols)[np.repeat(np.arange(rows), np.diff(pointers)), index] = values
    return out.reshape(shape)


def decode_weight(reader: ByteReader, shape: tuple[int, ...], encoding: str, nnz: int, precision: str) -> torch.Tensor:
    """The dequantised fp32 weight read from `reader` (inverse of `encode_weight`)."""
    values = torch.from_numpy(_decode_values(reader, shape, encoding, nnz, precision).copy())
    scales = None if precision == "fp16" else torch.from_numpy(reader.take(shape[0], np.float16).copy())
    return QuantizedTensor(precision, values, scales).dequantize()


def pack_header(spec: dict[str, Any], index: list) -> str:
    """The `header` metadata string: base64(zlib(compact JSON of spec and index)), ASCII with nothing to escape."""
    text = json.dumps({"spec": spec, "index": index}, separators=(",", ":"))
    return base64.b64encode(zlib.compress(text.encode(), 9)).decode("ascii")


def unpack_header(header: str) -> tuple[dict[str, Any], list]:
    """Inverse of `pack_header`: (spec, index)."""
    content = json.loads(zlib.decompress(base64.b64decode(header, validate=True)))
    return content["spec"], content["index"]


def save_quantized(model: nn.Module, spec: dict[str, Any], precision: str, path: str | Path) -> dict[str, Any]:
    """Fold BN, quantise every Conv2d / Linear weight at `precision` and write the deployable file; returns
    its sizes (file, data = computed bytes, header) and the per-tensor byte rows."""
    quantized = quantize_weights(model, validate_precision(precision))
    sizes = quantized_bytes(quantized)
    sections, index = [], []
    for row in sizes["tensors"]:
        sections += encode_weight(quantized.weights[row["name"]], row["chosen"])
        index.append([row["chosen"], row["nonzeros"]])
    for tensor in quantized.others.values():
        sections.append(tensor.detach().cpu().float().numpy().astype("<f4").reshape(-1).view(np.uint8))
    data = np.concatenate(sections) if sections else np.zeros(0, np.uint8)
    metadata = {"format": FORMAT, "precision": precision, "header": pack_header(spec, index)}
    save_file({"data": torch.from_numpy(data)}, str(path), metadata=metadata)
    file_bytes = Path(path).stat().st_size
    return {"path": str(path), "file_bytes": file_bytes, "data_bytes": len(data),
            "computed_bytes": sizes["total_bytes"], "header_bytes": file_bytes - len(data), "tensors": sizes["tensors"]}


def _read(path: str | Path) -> tuple[dict[str, str], np.ndarray]:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file (format={metadata.get('format')!r})")
        if "header" not in metadata:
            raise ValueError(f"{path} has no 'header' metadata (spec and index): not a complete {FORMAT} file")
        return metadata, f.get_tensor("data").numpy()


def _read_weights(reader: ByteReader, model: nn.Module, index: list, precision: str) -> dict[str, torch.Tensor]:
    layers = quantized_layers(model)
    if len(index) != len(layers):
        raise ValueError(f"the file has {len(index)} quantised weights, the model rebuilt from its spec {len(layers)}")
    return {f"{name}.weight": decode_weight(reader, tuple(layer.weight.shape), encoding, nnz, precision)
            for (name, layer), (encoding, nnz) in zip(layers, index, strict=True)}


def _read_others(reader: ByteReader, state: dict[str, torch.Tensor], skip: set[str]) -> dict[str, torch.Tensor]:
    others = [(k, v) for k, v in state.items() if k not in skip and v.is_floating_point()]
    return {k: torch.from_numpy(reader.take(v.numel(), np.float32).reshape(v.shape).copy()) for k, v in others}


def load_quantized(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the BN-folded eval model of a `save_quantized` file with its dequantised fp32 weights (equal to
    `fake_quant_model`'s); returns (model, architecture spec)."""
    metadata, data = _read(path)
    spec, index = unpack_header(metadata["header"])
    model = fold_batch_norm(build_from_spec(spec))
    reader = ByteReader(data)
    weights = _read_weights(reader, model, index, validate_precision(metadata["precision"]))
    state = model.state_dict()
    state |= weights | _read_others(reader, state, set(weights))
    if reader.offset != len(data):
        raise ValueError(f"{path}: {len(data) - reader.offset} bytes of data are left over after its index")
    model.load_state_dict(state)
    return model.eval(), spec


QUANT_FILE_NAME = "model.safetensors"


def artifact_dir_name(precision: str) -> str:
    """Run-artifact folder of the deployable file at `precision`: `model_<precision>` (e.g. model_int8), which
    holds QUANT_FILE_NAME (and the job layer's architecture.json)."""
    return f"model_{validate_precision(precision)}"
