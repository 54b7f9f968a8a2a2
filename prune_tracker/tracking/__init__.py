"""The one place that talks to MLflow: runs, tags, params, models, artifacts and model loading.

Loading never unpickles when it can avoid it: a model logged by prune-tracker carries
`model_spec/architecture.json` + `model_spec/state_dict.pt`, and is rebuilt from those with
`torch.load(..., weights_only=True)`. Only a model without them (logged elsewhere) falls back to
`mlflow.pytorch.load_model`, which unpickles, and is therefore trusted as far as the tracking server is; so does
a model pruned from such a foreign one (its spec names a `foreign:` arch: only its own code builds it), whose
logged state_dict is then loaded into the unpickled module (`foreign_models.py`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
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

from prune_tracker.core.deploy import ORT_ARTIFACT, ORT_INT8
from prune_tracker.core.models import architecture_spec, build_from_spec, build_model
from prune_tracker.core.models.foreign import is_foreign_arch
from prune_tracker.core.quant import artifact_dir_name
from prune_tracker.tracking import owner
from prune_tracker.tracking.errors import ArtifactWriteError, artifact_writes  # noqa: F401  (ArtifactWriteError: for callers)
from prune_tracker.tracking.foreign_models import foreign_spec, load_pickled, num_classes_of, signature_shapes

# Artifact downloads while loading a model would otherwise draw progress bars into command output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

_log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
SPEC_DIR = "model_spec"
SPEC_FILE = "architecture.json"
STATE_FILE = "state_dict.pt"


# The MLflow UI opens an experiment of this kind in its table of training runs, not in the GenAI overview.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
LOCAL_UI = "http://127.0.0.1:5000"


TrackingError = MlflowException  # what the tracking server or store raises, for callers without an MLflow import


class ModelLoadError(ValueError):
    """A model URI or file could not be resolved or does not fit its architecture."""


def _tag_experiment_kind(experiment_id: str) -> None:
    client = MlflowClient()
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def use_experiment(name: str) -> str:
    """Make `name` the active experiment (created if missing) and tag it as a model-development one."""
    experiment_id = mlflow.set_experiment(name).experiment_id
    _tag_experiment_kind(experiment_id)
    return experiment_id


def runs_page_url(experiment_id: str) -> str:
    """The MLflow UI page listing an experiment's runs (a local store is served by `mlflow ui`)."""
    uri = mlflow.get_tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs"


def ui_hint(run_id: str) -> str:
    """One line telling where to see a run: its experiment's runs page (and the command serving a local store)."""
    experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    uri = mlflow.get_tracking_uri()
    serve = "" if uri.startswith(("http://", "https://")) else f"  (serve it: mlflow ui --backend-store-uri {uri})"
    return f"runs: {runs_page_url(experiment_id)}{serve}"


def short_id(run_id: str | None) -> str:
    return (run_id or "")[:8]


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
    if reopen:
        _check_not_owned_elsewhere(reopen)
    if experiment_name and not launched_by_mlflow_run and not nested and not reopen:
        use_experiment(experiment_name)
    run = mlflow.start_run(run_id=reopen, nested=nested)
    heartbeat = None
    try:
        _tag_experiment_kind(run.info.experiment_id)
        # Also names the run `mlflow run` created (MLflow gave it a random name) and a reopened one; the owner
        # tags (this process, a first heartbeat) let `prune-tracker gc` tell a live run from an orphan.
        mlflow.set_tags({"stage": stage, **(tags or {}), **({"mlflow.runName": run_name} if run_name else {}),
                         **owner.owner_tags()})
        heartbeat = owner.Heartbeat(run.info.run_id, mlflow.get_tracking_uri(), owner.heartbeat_seconds()).start()
        yield run
    except KeyboardInterrupt:
        _end_run_after_error(heartbeat, "KILLED")
        raise
    except BaseException:
        _end_run_after_error(heartbeat, "FAILED")
        raise
    heartbeat.stop()
    mlflow.end_run("FINISHED")


def _end_run_after_error(heartbeat: owner.Heartbeat | None, status: str) -> None:
    """End the active run with `status` while an error propagates; if the server cannot be reached either, say
    so in one log line and let the original error propagate (`prune-tracker gc` marks the run KILLED later)."""
    if heartbeat is not None:
        heartbeat.stop()
    run = mlflow.active_run()
    try:
        mlflow.end_run(status)
    except MlflowException as err:
        _log.warning("could not mark run %s %s (%s); once this process is gone, `prune-tracker gc` marks it KILLED",
                     run.info.run_id if run else "?", status, err.message.splitlines()[0] if err.message else err)


def _check_not_owned_elsewhere(run_id: str) -> None:
    """Refuse to reopen a run that is RUNNING in a live process (two writers to one run)."""
    from prune_tracker.tracking.gc import DEFAULT_STALE_AFTER, orphan_reason, parse_duration

    run = MlflowClient().get_run(run_id)
    if run.info.status == "RUNNING" and orphan_reason(run, parse_duration(DEFAULT_STALE_AFTER)) is None:
        tags = run.data.tags
        raise ValueError(f"resume_run_id={run_id!r} is still RUNNING (owner pid {tags.get(owner.OWNER_PID, '?')} on "
                         f"host {tags.get(owner.OWNER_HOST, '?')}, heartbeat {tags.get(owner.HEARTBEAT, '?')}); "
                         "wait for it to end, or stop that process and run `prune-tracker gc`")


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


def _dataset_source(source: str):
    """The MLflow dataset source of a `DataSplits.source` string, typed explicitly: a bare path would match
    two registered local-file sources and MLflow warns about it on every run."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source

    kind, _, location = source.partition(":")  # "archive:/path", "torchvision:/root", "synthetic"
    if kind == "synthetic":
        return CodeDatasetSource(tags={"generator": "prune_tracker.core.data.synthetic_images"})
    local = [s for s in get_registered_sources() if s._get_source_type() == "local"][:1]
    return resolve_dataset_source(str(Path(location).resolve()), candidate_sources=local)


def log_dataset(splits, name: str) -> None:
    """The training split as an MLflow dataset input (a digest of the uint8 images, not a copy)."""
    dataset = mlflow.data.from_numpy(splits.train.images[:256].numpy(), targets=splits.train.labels[:256].numpy(),
                                     source=_dataset_source(splits.source), name=name)
    mlflow.log_input(dataset, context="training")


# ---------------------------------------------------------------- models


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


@dataclass
class LoadedModel:
    model: nn.Module
    spec: dict[str, Any]
    source_run_id: str | None
    uri: str
    precision: str = "fp32"  # int8 / int4: a deployable file (BatchNorm folded, weights quantised)
    input_shape: tuple[int, ...] | None = None  # one image, as the model's spec or MLflow signature declares it
    code_paths: list[str] | None = None  # a foreign model's code logged with it (importable in this process)


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


_URI_FORMS = ("runs:/<run_id>/model, models:/<name>@<alias>, models:/<name>/<version>, models:/<model_id>, "
              "m-<id>, or a local .pt file")


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
    """(run id, artifact name) behind `runs:/<id>/<name>`, `models:/<name>@<alias>`, `models:/<name>/<version>`,
    `models:/<model id>` or a bare logged-model id `m-...`."""
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
    raise ModelLoadError(f"model_uri {model_uri!r} is not one of: {_URI_FORMS}")


def resolve_run_id(model_uri: str) -> str:
    return resolve_model_location(model_uri)[0]


# The deployable variants a run logs beside its `model` (named by quant.artifact_dir_name), by precision; a w8a8
# point is the int8 file with its activation scales calibrated again.
QUANTISED_ARTIFACTS = tuple(artifact_dir_name(p) for p in ("int8", "int4"))
PRECISION_ARTIFACTS = {"fp16": MODEL_ARTIFACT, "int8": QUANTISED_ARTIFACTS[0], "int4": QUANTISED_ARTIFACTS[1],
                       "w8a8": QUANTISED_ARTIFACTS[0], ORT_INT8: ORT_ARTIFACT}  # ort_int8: tracking/onnx_models.py


def logged_model_uri(run_id: str, name: str = MODEL_ARTIFACT) -> str | None:
    """`models:/<model id>` of the model named `name` that run `run_id` logged (MLflow 3 keeps models apart from
    the run's artifacts); None when it logged none by that name."""
    experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    models = mlflow.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
        order_by=[{"field_name": "creation_time", "ascending": False}], output_format="list")
    return f"models:/{models[0].model_id}" if models else None


def _loadable_models(run_id: str) -> list[str]:
    return [name for name in (MODEL_ARTIFACT, *QUANTISED_ARTIFACTS, ORT_ARTIFACT) if logged_model_uri(run_id, name)]


def _check_artifact_name(model_uri: str, run_id: str, name: str) -> None:
    """A URI loads what it names: a name the run did not log is an error naming what the run has."""
    if name == MODEL_ARTIFACT or (name in (*QUANTISED_ARTIFACTS, ORT_ARTIFACT) and logged_model_uri(run_id, name)):
        return
    loadable = ", ".join(_loadable_models(run_id)) or "none"
    raise ModelLoadError(f"model_uri {model_uri!r}: run {run_id} has no loadable model {name!r}; loadable: {loadable}")


def _load_quantised(model_uri: str, run_id: str, name: str) -> LoadedModel:
    """A deployable int8 / int4 file: rebuilt from its architecture spec and packed tensors, never unpickled."""
    from prune_tracker.core.quant import QUANT_FILE_NAME, load_quantized

    with tempfile.TemporaryDirectory() as tmp:
        source = _variant_source(model_uri, run_id, name)
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp))
        model, spec = load_quantized(folder / QUANT_FILE_NAME)
    return LoadedModel(model.eval(), spec, run_id, model_uri, precision=name.removeprefix("model_"))


def _variant_source(model_uri: str, run_id: str, name: str) -> str:
    """`models:/<model id>` of a deployable variant: the URI itself when it names the logged model, else the model
    named `name` that the run logged."""
    source = model_uri if re.fullmatch(r"(models:/)?m-[0-9a-f]+", model_uri) else logged_model_uri(run_id, name)
    return source if source.startswith("models:/") else f"models:/{source}"


def load_model(model_uri: str, arch: str | None = None) -> LoadedModel:
    """Load a model from a tracking-server URI or a local file, rebuilding it from spec + state_dict.
    `arch`, when given, must agree with the architecture the model was logged with."""
    path = Path(model_uri).expanduser()
    if (
        "://" not in model_uri
        and not model_uri.startswith("models:/")
        and (path.exists() or path.suffix == ".pt")
    ):
        if not path.exists():
            raise ModelLoadError(f"model file {model_uri!r} does not exist")
        return _check_arch_agrees(load_model_file(path, arch), arch, model_uri)
    run_id, artifact = resolve_model_location(model_uri)
    _check_artifact_name(model_uri, run_id, artifact)
    if artifact in QUANTISED_ARTIFACTS:
        return _check_arch_agrees(_load_quantised(model_uri, run_id, artifact), arch, model_uri)
    if artifact == ORT_ARTIFACT:  # issue 19: the ONNX Runtime int8 model (tracking/onnx_models.py)
        from prune_tracker.tracking.onnx_models import load_onnx_model

        loaded = load_onnx_model(_variant_source(model_uri, run_id, artifact), model_uri, run_id)
        return _check_arch_agrees(loaded, arch, model_uri)
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
            if is_foreign_arch(spec.get("arch")):  # logged by us from a foreign model: only its pickle builds it
                return _check_arch_agrees(_load_foreign_logged(model_uri, run_id, spec, state), arch, model_uri)
            loaded = LoadedModel(_load_checked(spec, state, model_uri), spec, run_id, model_uri)
            loaded.input_shape = _declared_input_shape(spec, model_uri)
            return _check_arch_agrees(loaded, arch, model_uri)
    # A model logged outside prune-tracker: mlflow.pytorch unpickles it (trust = the server's).
    return _load_foreign(model_uri, run_id, arch)


def _declared_input_shape(spec: dict[str, Any], model_uri: str) -> tuple[int, ...] | None:
    """The input shape a logged model declares: its spec's (logged since any-CNN support), else its signature's."""
    shape = spec.get("input_shape")
    return tuple(int(d) for d in shape) if shape else signature_shapes(model_uri)[0]


def _load_foreign_logged(model_uri: str, run_id: str, spec: dict[str, Any], state: dict[str, torch.Tensor]
                         ) -> LoadedModel:
    """A foreign model prune-tracker logged (pruned, fine-tuned): unpickled, then its logged state_dict loaded."""
    model, code = load_pickled(model_uri)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelLoadError(f"{model_uri!r}: its {SPEC_DIR}/{STATE_FILE} does not fit the pickled module: "
                             f"{str(err).strip().splitlines()[0]}") from None
    return LoadedModel(model.eval(), spec, run_id, model_uri, input_shape=_declared_input_shape(spec, model_uri),
                       code_paths=code)


def _load_foreign(model_uri: str, run_id: str, arch: str | None) -> LoadedModel:
    """An `mlflow.pytorch` model of any nn.Module (unpickled). With `arch` (a zoo name or torchvision:<builder>) it
    is rebuilt as that architecture from its state_dict, so it is logged and reloaded from a spec afterwards;
    without, it is pruned as it is (arch `foreign:<module>.<class>`)."""
    model, code = load_pickled(model_uri)
    input_shape, classes = signature_shapes(model_uri)
    num_classes = num_classes_of(model, classes, input_shape)
    if arch:
        spec = architecture_spec(model, arch, num_classes)
        return LoadedModel(_load_checked(spec, model.state_dict(), model_uri), spec, run_id, model_uri,
                           input_shape=input_shape)
    return LoadedModel(model, foreign_spec(model, num_classes, input_shape), run_id, model_uri,
                       input_shape=input_shape, code_paths=code)


def _check_arch_agrees(loaded: LoadedModel, arch: str | None, origin: str) -> LoadedModel:
    logged = loaded.spec.get("arch")
    if arch and logged and arch != logged:
        raise ModelLoadError(f"arch={arch!r} conflicts with {origin!r}, which was logged as arch={logged!r}; "
                             "omit arch or pass the logged one")
    return loaded


def finished_run_with_tag(experiment_id: str, key: str, value: str) -> str | None:
    """The newest FINISHED run of the experiment whose tag `key` equals `value`."""
    runs = MlflowClient().search_runs([experiment_id], f"tags.{key} = '{value}' and attributes.status = 'FINISHED'",
                                      max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def ancestor_run(run_id: str, stage: str, max_depth: int = 32) -> str | None:
    """`run_id` itself or its nearest ancestor (through the `parent_run_id` tag) whose tag `stage` is `stage`."""
    client = MlflowClient()
    for _ in range(max_depth):
        try:
            tags = client.get_run(run_id).data.tags
        except MlflowException:
            return None
        if tags.get("stage") == stage:
            return run_id
        run_id = tags.get("parent_run_id")
        if not run_id:
            return None
    return None


def lineage_params(run_id: str, keys: tuple[str, ...], max_depth: int = 32) -> dict[str, str]:
    """For each key, the first non-empty param value along the run and its ancestors (`parent_run_id`): `mlflow
    run` logs an entry point's raw values (an empty "take the parent's") before the script resolves them."""
    client, found = MlflowClient(), {}
    for _ in range(max_depth):
        run = client.get_run(run_id)
        for key in keys:
            if key not in found and run.data.params.get(key) not in (None, ""):
                found[key] = run.data.params[key]
        run_id = run.data.tags.get("parent_run_id")
        if not run_id or len(found) == len(keys):
            return found
    return found


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
    with artifact_writes(name), tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        torch.save(state, path)
        mlflow.log_artifact(str(path), str(Path(name).parent))


def load_checkpoint(run_id: str, name: str = "checkpoint/last.pt") -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = download_artifact(run_id, name, Path(tmp))
        if path is None:
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises several types for a torn file
            raise ValueError(f"{name} of run {run_id} cannot be read ({str(err).splitlines()[0][:200]}): it was "
                             "probably cut short by a kill while it was written; train a new run") from None


# ---------------------------------------------------------------- artifacts
# (stage runs, tags, documents and figures: tracking/artifacts.py, re-exported at the end of this module)


def run_params(run_id: str) -> dict[str, str]:
    return MlflowClient().get_run(run_id).data.params


from prune_tracker.tracking.artifacts import (  # noqa: E402,F401  (re-exported: the package is the one MLflow entry)
    load_dict,
    log_artifact,
    log_dict,
    log_figure,
    log_text,
    set_tags,
    stage_run,
)
from prune_tracker.tracking.gc import mark_orphans_killed  # noqa: E402,F401  (orphan runs -> KILLED: `prune-tracker gc`, the sweep)
