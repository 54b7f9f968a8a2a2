"""Models in the tracking store: how a model-producing run logs its model (the `model` MLflow model plus the
`model_spec/` folder it is rebuilt from, and the deployable int8 / int4 folders), and what a model URI names."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from torch import nn

from prune_tracker.core.deploy import ORT_ARTIFACT, ORT_INT8
from prune_tracker.core.models import architecture_spec
from prune_tracker.core.quant import artifact_dir_name
from prune_tracker.tracking.errors import ModelLoadError, artifact_writes
from prune_tracker.tracking.runs import log_metrics

MODEL_ARTIFACT = "model"
SPEC_DIR = "model_spec"
SPEC_FILE = "architecture.json"
STATE_FILE = "state_dict.pt"
# The deployable variants a run logs beside its `model` (named by quant.artifact_dir_name), by precision; a w8a8
# point is the int8 file with its activation scales calibrated again.
QUANTISED_ARTIFACTS = tuple(artifact_dir_name(p) for p in ("int8", "int4"))
PRECISION_ARTIFACTS = {"fp16": MODEL_ARTIFACT, "int8": QUANTISED_ARTIFACTS[0], "int4": QUANTISED_ARTIFACTS[1],
                       "w8a8": QUANTISED_ARTIFACTS[0], ORT_INT8: ORT_ARTIFACT}  # ort_int8: tracking/onnx_models.py
# Every deployable variant (packed int8 / int4 files, the ONNX Runtime int8 model), loaded without unpickling.
VARIANT_ARTIFACTS = (*QUANTISED_ARTIFACTS, ORT_ARTIFACT)


# ---------------------------------------------------------------- logging


@contextlib.contextmanager
def _quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def runtime_requirements() -> list[str]:
    """Pinned requirements of a logged model. Naming them spares MLflow's requirement inference, which
    reloads the model in a subprocess (~9 s per model on 2 cores). The pickled module also needs the
    prune_tracker package importable; the state_dict + spec route needs only torch."""
    pins = []
    for name in ("torch", "torchvision", "numpy"):
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def log_model(model: nn.Module, arch: str, num_classes: int, extra_spec: dict[str, Any] | None = None,
              input_shape: tuple[int, ...] = (3, 32, 32), code_paths: list[str] | None = None) -> str:
    """Log the model three ways: mlflow.pytorch pickle flavour named `model` (trainable nn.Module on
    load, unlike MLflow 3's default pt2 export), and the state_dict + architecture spec (safe rebuild; a
    `foreign:` model reloads by unpickling, its `code_paths` logged with it). Returns the logged model id."""
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    spec = {**architecture_spec(model, arch, num_classes), "input_shape": list(input_shape), **(extra_spec or {})}
    example = np.zeros((1, *input_shape), dtype=np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    signature = mlflow.models.infer_signature(example, output)
    # its pickle caution: we log spec + state_dict for a safe load
    with _quiet_logger("mlflow.pytorch"), artifact_writes(MODEL_ARTIFACT):
        info = mlflow.pytorch.log_model(model, name=MODEL_ARTIFACT, serialization_format="pickle",
                                        signature=signature, input_example=example,
                                        pip_requirements=runtime_requirements(), code_paths=code_paths or None)
    with artifact_writes(SPEC_DIR), tempfile.TemporaryDirectory() as tmp:
        mlflow.log_dict(spec, f"{SPEC_DIR}/{SPEC_FILE}")
        path = Path(tmp) / STATE_FILE
        torch.save(model.state_dict(), path)
        mlflow.log_artifact(str(path), SPEC_DIR)
    return info.model_id


def log_files_model(local_dir: Path, name: str, tags: dict[str, str], metrics: dict[str, float]) -> str:
    """Log a folder (a deployable file and its architecture spec; no MLmodel, no pickle) as an MLflow logged
    model named `name` of the active run, so `runs:/<id>/<name>` and the registry can name it."""
    run = mlflow.active_run()
    model = mlflow.initialize_logged_model(name=name, source_run_id=run.info.run_id, tags=tags)
    try:
        with artifact_writes(name):
            MlflowClient().log_model_artifacts(model.model_id, str(local_dir))
    except BaseException:
        mlflow.finalize_logged_model(model.model_id, "FAILED")
        raise
    mlflow.finalize_logged_model(model.model_id, "READY")
    log_metrics(metrics, model_id=model.model_id)
    return model.model_id


# ---------------------------------------------------------------- what a model URI names

URI_FORMS = ("runs:/<run_id>/model, models:/<name>@<alias>, models:/<name>/<version>, models:/<model_id>, "
             "m-<id>, or a local .pt file")


def is_local_file(model_uri: str) -> bool:
    """Whether `model_uri` names a local file (an existing path, or one ending in .pt) rather than a store URI."""
    path = Path(model_uri).expanduser()
    return "://" not in model_uri and not model_uri.startswith("models:/") and (path.exists() or path.suffix == ".pt")


def _logged_model_location(client: MlflowClient, model_id: str) -> tuple[str, str]:
    logged = client.get_logged_model(model_id)
    return logged.source_run_id, logged.name


def _source_location(client: MlflowClient, source: str) -> tuple[str, str]:
    """(run id, artifact name) of a registered version's source: `runs:/<id>/<path>` or `models:/m-...`."""
    if source.startswith("runs:/"):
        run_id, _, path = source[len("runs:/"):].partition("/")
        return run_id, path.strip("/")
    model_id = source.rsplit("/", 1)[-1] if "/models/" in source or source.startswith("models:/") else source
    return _logged_model_location(client, model_id)


def resolve_model_location(model_uri: str) -> tuple[str, str]:
    """(run id, artifact name) behind `runs:/<id>/<name>`, `models:/<name>@<alias>` (where the alias points now),
    `models:/<name>/<version>`, `models:/<model id>` or a bare logged-model id `m-...`."""
    client = MlflowClient()
    try:
        if model_uri.startswith("runs:/"):
            run_id, _, path = model_uri[len("runs:/") :].partition("/")
            client.get_run(run_id)
            if not path.strip("/"):
                raise ModelLoadError(f"model_uri {model_uri!r} names no artifact; e.g. runs:/{run_id}/model")
            return run_id, path.strip("/")
        target = model_uri[len("models:/") :] if model_uri.startswith("models:/") else model_uri
        if re.fullmatch(r"m-[0-9a-f]+", target):
            return _logged_model_location(client, target)
        if "@" in target:
            name, alias = target.split("@", 1)
            return _source_location(client, client.get_model_version_by_alias(name, alias).source)
        name, _, version = target.rpartition("/")
        if name and version.isdigit():
            return _source_location(client, client.get_model_version(name, version).source)
    except MlflowException as err:
        raise ModelLoadError(f"model_uri {model_uri!r} not found: {err.message.splitlines()[0]}") from None
    raise ModelLoadError(f"model_uri {model_uri!r} is not one of: {URI_FORMS}")


def resolve_run_id(model_uri: str) -> str:
    return resolve_model_location(model_uri)[0]


def logged_model_uri(run_id: str, name: str = MODEL_ARTIFACT) -> str | None:
    """`models:/<model id>` of the model named `name` that run `run_id` logged (MLflow 3 keeps models apart from
    the run's artifacts); None when it logged none by that name."""
    experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    models = mlflow.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
        order_by=[{"field_name": "creation_time", "ascending": False}], output_format="list")
    return f"models:/{models[0].model_id}" if models else None


def loadable_models(run_id: str) -> list[str]:
    return [name for name in (MODEL_ARTIFACT, *VARIANT_ARTIFACTS) if logged_model_uri(run_id, name)]


def check_artifact_name(model_uri: str, run_id: str, name: str) -> None:
    """A URI loads what it names: a name the run did not log is an error naming what the run has."""
    if name == MODEL_ARTIFACT or (name in VARIANT_ARTIFACTS and logged_model_uri(run_id, name)):
        return
    loadable = ", ".join(loadable_models(run_id)) or "none"
    raise ModelLoadError(f"model_uri {model_uri!r}: run {run_id} has no loadable model {name!r}; loadable: {loadable}")


def quantised_source(model_uri: str, run_id: str, name: str) -> str:
    """`models:/<model id>` of a run's deployable variant `name` (int8 / int4 folder, ONNX Runtime int8 model): the
    URI itself when it names the logged model, else the model named `name` that the run logged."""
    source = model_uri if re.fullmatch(r"(models:/)?m-[0-9a-f]+", model_uri) else logged_model_uri(run_id, name)
    return source if source.startswith("models:/") else f"models:/{source}"
