"""A model as an ONNX file: torch's dynamo exporter (torch.export -> ONNX, BatchNorm folded into the convolutions by
its optimiser), input `x` with a dynamic batch dimension, output `logits`, one self-contained file."""

from __future__ import annotations

import contextlib
import copy
import io
import re
import tempfile
from pathlib import Path

import onnx
import torch
from torch import nn

INPUT_NAME, OUTPUT_NAME = "x", "logits"


class ExportError(ValueError):
    """The model cannot be exported to ONNX; the message names the model and the exporter's reason in one line."""


def _reason(err: BaseException) -> str:
    """`Type: first line` of the innermost cause (torch.onnx wraps torch.export's error in a generic one)."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # no terminal colour codes in a one-line error
    return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else 'no message'}"


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, label: str = "the model") -> Path:
    """Write a CPU eval copy of `model` (the caller's is untouched) to `path`: input (batch, *input_shape), batch
    dynamic. ExportError naming `label` when torch.export or the ONNX translation fails, or when ONNX Runtime's
    outputs of the file differ from the model's on a batch of 3 random inputs."""
    path = Path(path)
    model = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
    example = torch.zeros(2, *input_shape)  # batch 2: torch.export specialises a dimension of size 1
    try:
        # torch.export reports a failure by dumping graphs to stdout / stderr: the error says it in one line
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamo=True, dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
                              external_data=False, verbose=False, report=False)
    except Exception as err:  # noqa: BLE001 - torch.export and onnxscript raise many types
        raise ExportError(f"{label} cannot be exported to ONNX ({_reason(err)})") from None
    strip_debug_info(path)
    _check_outputs(model, input_shape, path, label)
    return path


def _check_outputs(model: nn.Module, input_shape: tuple[int, ...], path: Path, label: str) -> None:
    """ExportError unless ONNX Runtime computes the model's outputs from the file (a batch size the export did not
    see, so the batch dimension is checked to be dynamic)."""
    from .runtime import OrtModule

    x = torch.randn(3, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).float()
    try:
        got = OrtModule(path)(x)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types
        raise ExportError(f"{label}: ONNX Runtime cannot run its exported graph ({_reason(err)})") from None
    tolerance = 1e-3 * float(expected.abs().max()) + 1e-5
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-3, atol=tolerance):
        raise ExportError(f"{label}: its exported ONNX graph computes other outputs than the model (data-dependent "
                          "Python in its forward?)")


def check_exportable(model: nn.Module, input_shape: tuple[int, ...], label: str) -> None:
    """ExportError (naming `label`) unless `model` exports to ONNX: asked before a run starts, so a model ONNX cannot
    take fails in one line with nothing logged."""
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, input_shape, Path(tmp) / "check.onnx", label)


def strip_debug_info(path: Path) -> None:
    """Drop the exporter's per-node debug metadata (source locations, original names) and doc strings, which no
    runtime reads: 10-25 % of a CIFAR model's file otherwise."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info, *model.graph.initializer):
        del value.metadata_props[:]
    model.graph.doc_string = ""
    onnx.save_model(model, str(path), save_as_external_data=False)


def file_bytes(path: str | Path) -> int:
    """Bytes of an ONNX model on disk: the .onnx file plus every external-data file its tensors reference."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for tensor in onnx.external_data_helper._get_all_tensors(model)
                 if tensor.data_location == onnx.TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / location).stat().st_size for location in sorted(locations))
