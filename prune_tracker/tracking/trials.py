"""MLflow calls of sweeps and searches (prune_tracker/sweep.py, search.py): trial runs created SCHEDULED under the
study's run before any trial starts, their final status, and the client settings a trial in another process (a
Ray worker) needs to reach the same tracking server."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

SCHEDULED = RunStatus.to_string(RunStatus.SCHEDULED)
UNFINISHED = (SCHEDULED, RunStatus.to_string(RunStatus.RUNNING))
ERROR_TAG = "error"

# What a client needs to reach the tracking server (and, without proxied artifacts, the artifact store). A Ray
# worker of an existing cluster does not inherit the driver's environment, so a trial task carries these.
CLIENT_ENV_PREFIXES = ("MLFLOW_TRACKING_", "MLFLOW_S3_", "MLFLOW_HTTP_REQUEST_", "MLFLOW_GCS_", "AZURE_STORAGE_")
CLIENT_ENV_NAMES = ("MLFLOW_DISABLE_TELEMETRY", "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "PRUNE_TRACKER_CACHE",
                    "PRUNE_TRACKER_HEARTBEAT_SECONDS")


def client_environment() -> dict[str, str]:
    """The tracking URI (absolute, as this process resolves it) and the credentials and settings in the
    environment that a trial running in another process needs."""
    env = {k: v for k, v in os.environ.items() if k.startswith(CLIENT_ENV_PREFIXES) or k in CLIENT_ENV_NAMES}
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    return env


def apply_client_environment(env: Mapping[str, str]) -> None:
    """Set what :func:`client_environment` captured, in this process (a trial task does this first); a run id or
    experiment id left in the environment by `mlflow run` is dropped: the trial reopens its own run."""
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        os.environ.pop(name, None)
    os.environ.update(env)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])


def model_identity(model_uri: str) -> str:
    """What a model URI names, for a trial's key: `run:<run id>/<artifact>` behind runs:/, models:/ (an alias as it
    points now) and logged-model URIs, or `file:<sha256>` of a local file. An unknown model is a one-line error."""
    from prune_tracker.tracking import ModelLoadError, resolve_model_location

    path = Path(model_uri).expanduser()
    if "://" not in model_uri and not model_uri.startswith("models:/") and (path.exists() or path.suffix == ".pt"):
        if not path.is_file():
            raise ModelLoadError(f"model file {model_uri!r} does not exist")
        return "file:" + hashlib.sha256(path.read_bytes()).hexdigest()[:24]
    run_id, artifact = resolve_model_location(model_uri)
    return f"run:{run_id}/{artifact}"


def experiment_name(experiment_id: str) -> str:
    return MlflowClient().get_experiment(experiment_id).name


def schedule_run(experiment_id: str, parent_run_id: str, name: str, tags: Mapping[str, str]) -> str:
    """A run nested under `parent_run_id`, in status SCHEDULED until its trial reopens it."""
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name=name,
                            tags={**tags, MLFLOW_PARENT_RUN_ID: parent_run_id, MLFLOW_RUN_NAME: name})
    client.update_run(run.info.run_id, status=SCHEDULED)
    return run.info.run_id


def run_status(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.status


def mark_failed(run_id: str, error: str, tags: Mapping[str, str] | None = None) -> None:
    """Tag the trial run with its error line and end it FAILED unless it already ended (a trial that failed inside
    its run ended it FAILED itself; one rejected before it reopened the run left it SCHEDULED)."""
    client = MlflowClient()
    client.set_tag(run_id, ERROR_TAG, error[:5000] or "failed")
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    if client.get_run(run_id).info.status in UNFINISHED:
        client.set_terminated(run_id, "FAILED")


def set_run_tags(run_id: str, tags: Mapping[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def kill_scheduled(run_ids: Iterable[str]) -> list[str]:
    """End KILLED the runs that never started (still SCHEDULED) when a study stops early; returns them. A RUNNING
    trial belongs to its process: it ends it, or `prune-tracker gc` marks it KILLED once that process is gone."""
    client, killed = MlflowClient(), []
    for run_id in run_ids:
        with contextlib.suppress(MlflowException):
            if client.get_run(run_id).info.status == SCHEDULED:
                client.set_terminated(run_id, "KILLED")
                killed.append(run_id)
    return killed


def run_ids_filter(run_ids: Iterable[str]) -> str:
    """An MLflow filter matching exactly these runs (for `compare` over a study's trials)."""
    ids = sorted(set(run_ids))
    if not ids:
        raise ValueError("no runs to filter on")
    return "attributes.run_id IN (" + ", ".join(f"'{i}'" for i in ids) + ")"


def finished_run_with_tags(experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The newest FINISHED run of the experiment carrying all of `tags` (exact values), or None."""
    conditions = [f"tags.`{k}` = '{v}'" for k, v in tags.items()] + ["attributes.status = 'FINISHED'"]
    runs = MlflowClient().search_runs([experiment_id], " and ".join(conditions), max_results=1,
                                      order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None
