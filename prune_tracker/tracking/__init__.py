"""The one place that talks to MLflow: runs, tags, params, models, artifacts and model loading.

Loading never unpickles when it can avoid it: a model logged by prune-tracker carries
`model_spec/architecture.json` + `model_spec/state_dict.pt`, and is rebuilt from those with
`torch.load(..., weights_only=True)`. Only a model without them (logged elsewhere) falls back to
`mlflow.pytorch.load_model`, which unpickles, and is therefore trusted as far as the tracking server is.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from torch import nn

from ..models import architecture_spec, build_from_spec, build_model

# Artifact downloads while loading a model would otherwise draw progress bars into command output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

STAGES = ("train", "prune", "finetune", "evaluate", "compare", "report", "pipeline")
SPEC_DIR = "model_spec"
SPEC_FILE = "architecture.json"
STATE_FILE = "state_dict.pt"


class ModelLoadError(ValueError):
    """A model URI or file could not be resolved or does not fit its architecture."""


# ---------------------------------------------------------------- runs


@contextlib.contextmanager
def tracked_run(
    stage: str,
    experiment_name: str | None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    nested: bool = False,
    resume_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (under `mlflow run`: continue the run it created; with `resume_run_id`: reopen that run) a run
    tagged with its `stage`. An exception inside ends the run FAILED, Ctrl-C ends it KILLED, before it
    propagates, so no run is left RUNNING."""
    launched_by_mlflow_run = bool(os.environ.get("MLFLOW_RUN_ID")) and not nested
    reopen = resume_run_id if resume_run_id and not launched_by_mlflow_run else None
    if experiment_name and not launched_by_mlflow_run and not nested and not reopen:
        mlflow.set_experiment(experiment_name)
    run = mlflow.start_run(run_id=reopen, run_name=None if launched_by_mlflow_run or reopen else run_name,
                           nested=nested)
    try:
        mlflow.set_tags({"stage": stage, **(tags or {})})
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def fail_launched_run() -> None:
    """Mark the run that `mlflow run` created for this process FAILED: used when the input is rejected
    before any run of ours started."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    with contextlib.suppress(MlflowException):
        client = MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FAILED")


def log_params(params: dict[str, Any]) -> None:
    """Log params, skipping those already on the run: `mlflow run` logs the entry point's raw values
    first, and MLflow refuses to change a logged value (e.g. "0.10" re-logged as "0.1")."""
    run = mlflow.active_run()
    existing = MlflowClient().get_run(run.info.run_id).data.params if run else {}
    fresh = {k: ("" if v is None else v) for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


def log_metrics(metrics: dict[str, float], step: int | None = None, model_id: str | None = None) -> None:
    clean = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(float(v))}
    if not clean:
        return
    if model_id is None:
        mlflow.log_metrics(clean, step=step)
    else:
        for key, value in clean.items():
            mlflow.log_metric(key, value, step=step, model_id=model_id)


def log_dataset(splits, name: str) -> None:
    """The training split as an MLflow dataset input (a digest of the uint8 images, not a copy)."""
    images = splits.train.images[:256].numpy()
    source = splits.source.split(":", 1)[-1]  # "archive:/path" -> a path MLflow can resolve
    dataset = mlflow.data.from_numpy(
        images, targets=splits.train.labels[:256].numpy(), source=source, name=name
    )
    mlflow.log_input(dataset, context="training")


# ---------------------------------------------------------------- models


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


def log_model(model: nn.Module, arch: str, num_classes: int, extra_spec: dict[str, Any] | None = None) -> str:
    """Log the model three ways: mlflow.pytorch pickle flavour named `model` (trainable nn.Module on
    load, unlike MLflow 3's default pt2 export), and the state_dict + architecture spec (safe rebuild).
    Returns the logged model id."""
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    spec = {**architecture_spec(model, arch, num_classes), **(extra_spec or {})}
    example = np.zeros((1, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    signature = mlflow.models.infer_signature(example, output)
    info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", signature=signature,
                                    input_example=example, pip_requirements=runtime_requirements())
    mlflow.log_dict(spec, f"{SPEC_DIR}/{SPEC_FILE}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / STATE_FILE
        torch.save(model.state_dict(), path)
        mlflow.log_artifact(str(path), SPEC_DIR)
    return info.model_id


@dataclass
class LoadedModel:
    model: nn.Module
    spec: dict[str, Any]
    source_run_id: str | None
    uri: str


def _load_checked(spec: dict[str, Any], state: dict[str, torch.Tensor], origin: str) -> nn.Module:
    try:
        model = build_from_spec(spec)
        model.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0]
        raise ModelLoadError(
            f"{origin} does not fit architecture {spec.get('arch')!r}: {first_line}"
        ) from None
    return model.eval()


def _infer_num_classes(state: dict[str, torch.Tensor]) -> int:
    last_linear = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not last_linear:
        raise ModelLoadError("cannot infer num_classes from the state_dict: it has no Linear layer")
    return int(last_linear[-1].shape[0])


def load_model_file(path: Path, arch: str | None) -> LoadedModel:
    """A local `.pt` file: either {"spec": ..., "state_dict": ...} (what prune-tracker writes) or a plain
    state_dict, which needs `arch`. Loaded with weights_only=True: a file a user hands us is never
    unpickled."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a bad file
        raise ModelLoadError(f"cannot read model file {str(path)!r}: {str(err).splitlines()[0]}") from None
    if isinstance(blob, dict) and "spec" in blob and "state_dict" in blob:
        return LoadedModel(
            _load_checked(blob["spec"], blob["state_dict"], str(path)), blob["spec"], None, str(path)
        )
    if not isinstance(blob, dict):
        raise ModelLoadError(f"model file {str(path)!r} holds no state_dict")
    if not arch:
        raise ModelLoadError(f"model file {str(path)!r} is a plain state_dict: pass arch=<name> with it")
    spec = architecture_spec(build_model(arch, _infer_num_classes(blob)), arch, _infer_num_classes(blob))
    spec["layers"] = {name: layer for name, layer in _spec_from_state(blob, spec["layers"]).items()}
    return LoadedModel(_load_checked(spec, blob, str(path)), spec, None, str(path))


def _spec_from_state(state: dict[str, torch.Tensor], layers: dict[str, dict]) -> dict[str, dict]:
    """Read layer widths from a plain state_dict, so a channel-pruned state_dict loads too."""
    out = {}
    for name, layer in layers.items():
        weight = state.get(f"{name}.weight")
        if weight is None:
            out[name] = layer
        elif layer["type"] == "Conv2d":
            out[name] = {**layer, "out_channels": int(weight.shape[0]), "in_channels": int(weight.shape[1])}
        elif layer["type"] == "Linear":
            out[name] = {**layer, "out_features": int(weight.shape[0]), "in_features": int(weight.shape[1])}
        else:
            out[name] = {**layer, "num_features": int(weight.shape[0])}
    return out


def save_model_file(model: nn.Module, spec: dict[str, Any], path: Path) -> None:
    torch.save({"spec": spec, "state_dict": model.cpu().state_dict()}, path)


def resolve_run_id(model_uri: str) -> str:
    """The run that logged the model behind `runs:/`, `models:/<name>@<alias>`, `models:/<name>/<version>`,
    `models:/<model id>` or a bare logged-model id `m-...`."""
    client = MlflowClient()
    try:
        if model_uri.startswith("runs:/"):
            run_id = model_uri[len("runs:/") :].split("/")[0]
            client.get_run(run_id)
            return run_id
        target = model_uri[len("models:/") :] if model_uri.startswith("models:/") else model_uri
        if re.fullmatch(r"m-[0-9a-f]+", target):
            return client.get_logged_model(target).source_run_id
        if "@" in target:
            name, alias = target.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        name, _, version = target.rpartition("/")
        if name and version.isdigit():
            return client.get_model_version(name, version).run_id
    except MlflowException as err:
        raise ModelLoadError(f"model_uri {model_uri!r} not found: {err.message.splitlines()[0]}") from None
    raise ModelLoadError(
        f"model_uri {model_uri!r} is not one of: runs:/<run_id>/model, models:/<name>@<alias>, "
        "models:/<name>/<version>, models:/<model_id>, m-<id>, or a local .pt file"
    )


def load_model(model_uri: str, arch: str | None = None) -> LoadedModel:
    """Load a model from a tracking-server URI or a local file, rebuilding it from spec + state_dict."""
    path = Path(model_uri).expanduser()
    if (
        "://" not in model_uri
        and not model_uri.startswith("models:/")
        and (path.exists() or path.suffix == ".pt")
    ):
        if not path.exists():
            raise ModelLoadError(f"model file {model_uri!r} does not exist")
        return load_model_file(path, arch)
    run_id = resolve_run_id(model_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SPEC_DIR, dst_path=tmp)
            )
        except (MlflowException, OSError):
            folder = None
        if folder is not None and (folder / SPEC_FILE).exists():
            spec = json.loads((folder / SPEC_FILE).read_text())
            state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
            return LoadedModel(_load_checked(spec, state, model_uri), spec, run_id, model_uri)
        # A model logged outside prune-tracker: mlflow.pytorch unpickles it (trust = the server's).
        model = mlflow.pytorch.load_model(model_uri, dst_path=tmp)
    if not arch:
        raise ModelLoadError(f"{model_uri!r} has no {SPEC_DIR}/ artifact; pass arch=<name> to describe it")
    return LoadedModel(
        model, architecture_spec(model, arch, _infer_num_classes(model.state_dict())), run_id, model_uri
    )


def run_tags(run_id: str) -> dict[str, str]:
    return MlflowClient().get_run(run_id).data.tags


def run_metrics(run_id: str) -> dict[str, float]:
    return MlflowClient().get_run(run_id).data.metrics


def download_artifact(run_id: str, artifact_path: str, dst: Path) -> Path | None:
    try:
        return Path(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst))
        )
    except (MlflowException, OSError):
        return None


def log_checkpoint(state: dict[str, Any], name: str = "checkpoint/last.pt") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        torch.save(state, path)
        mlflow.log_artifact(str(path), str(Path(name).parent))


def load_checkpoint(run_id: str, name: str = "checkpoint/last.pt") -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = download_artifact(run_id, name, Path(tmp))
        return torch.load(path, map_location="cpu", weights_only=True) if path else None
