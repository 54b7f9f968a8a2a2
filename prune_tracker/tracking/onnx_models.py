"""ONNX Runtime models in MLflow (`mlflow.onnx`): the quantised model a run logs for precision ort_int8
(`model_ort_int8`) and its loading, as a `LoadedModel` whose module runs the ONNX file with ONNX Runtime.

The logged folder holds the .onnx file exactly as measured (one file, no external data: its size is the run's
`file_ort_int8_bytes`) and, in the MLmodel metadata, what loading needs besides the file: arch, num_classes,
input_shape (the architecture's own spec and weights are the run's `model`).
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
from mlflow.models import Model, ModelSignature
from mlflow.types import Schema, TensorSpec

from prune_tracker.core.deploy import ORT_INT8
from prune_tracker.core.deploy.export import INPUT_NAME, OUTPUT_NAME
from prune_tracker.core.deploy.runtime import OrtModule
from prune_tracker.tracking import LoadedModel, log_metrics
from prune_tracker.tracking.errors import artifact_writes

METADATA_KEY = "prune_tracker"


def _requirements() -> list[str]:
    """Pinned runtime requirements (naming them spares MLflow's inference, which reloads the model)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in ("onnx", "onnxruntime")]


def _signature(input_shape: tuple[int, ...], num_classes: int) -> ModelSignature:
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *input_shape), INPUT_NAME)]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes), OUTPUT_NAME)]))


def log_onnx_model(path: Path, name: str, arch: str, num_classes: int, input_shape: tuple[int, ...],
                   metrics: dict[str, float]) -> str:
    """Log the ONNX file at `path` as the MLflow ONNX model `name` of the active run, `metrics` attached to it;
    returns its model id."""
    spec = {"arch": arch, "num_classes": int(num_classes), "input_shape": [int(d) for d in input_shape],
            "precision": ORT_INT8}
    with artifact_writes(name):
        info = mlflow.onnx.log_model(onnx.load(str(path)), name=name, signature=_signature(input_shape, num_classes),
                                     metadata={METADATA_KEY: spec}, pip_requirements=_requirements(),
                                     save_as_external_data=False, tags={"precision": ORT_INT8, "arch": arch})
    log_metrics(metrics, model_id=info.model_id)
    return info.model_id


def _spec(folder: Path, model_uri: str) -> dict[str, Any]:
    spec = (Model.load(str(folder)).metadata or {}).get(METADATA_KEY)
    if not spec:
        raise ValueError(f"{model_uri!r} is an ONNX model without prune-tracker's metadata (arch, num_classes)")
    return spec


def load_onnx_model(source: str, model_uri: str, run_id: str) -> LoadedModel:
    """The ONNX model logged at `source` (`models:/<id>`) as a LoadedModel run by ONNX Runtime (precision ort_int8;
    not trainable: prune and finetune refuse it)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp))
        spec = _spec(folder, model_uri)
        data = Model.load(str(folder)).flavors["onnx"]["data"]
        module = OrtModule(folder / data)  # the session holds the model: the folder may go
    return LoadedModel(module.eval(), spec, run_id, model_uri, precision=spec.get("precision", ORT_INT8),
                       input_shape=tuple(spec["input_shape"]))
