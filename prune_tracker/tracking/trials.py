"""MLflow calls of sweeps and searches (studies/sweep.py, search.py): trial runs created SCHEDULED under the
study's run before any trial starts (owned by the study's process until a trial reopens them), their final status,
an attempt lost with its worker, and the client settings a trial in another process (a Ray worker) needs to reach
the same tracking server."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from prune_tracker.tracking import owner
from prune_tracker.tracking.foreign_models import TRUST_PICKLE_ENV

SCHEDULED = RunStatus.to_string(RunStatus.SCHEDULED)
UNFINISHED = (SCHEDULED, RunStatus.to_string(RunStatus.RUNNING))
ERROR_TAG = "error"
LOST_ATTEMPT_TAG = "lost_attempt_{}"  # per attempt: why its worker was lost (the retry then reopens the run)

# What a client needs to reach the tracking server (and, without proxied artifacts, the artifact store). A Ray
# worker of an existing cluster does not inherit the driver's environment, so a trial task carries these.
CLIENT_ENV_PREFIXES = ("MLFLOW_TRACKING_", "MLFLOW_S3_", "MLFLOW_HTTP_REQUEST_", "MLFLOW_GCS_", "AZURE_STORAGE_")
CLIENT_ENV_NAMES = ("MLFLOW_DISABLE_TELEMETRY", "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "PRUNE_TRACKER_CACHE",
                    "PRUNE_TRACKER_HEARTBEAT_SECONDS", TRUST_PICKLE_ENV)


def client_environment() -> dict[str, str]:
    """The tracking URI (absolute, as this process resolves it) and the credentials and settings in the
    environment that a trial running in another process needs."""
    env = {k: v for k, v in os.environ.items() if k.startswith(CLIENT_ENV_PREFIXES) or k in CLIENT_ENV_NAMES}
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    return env


def apply_client_environment(env: Mapping[str, str]) -> None:
    """Set what :func:`client_environment` captured, in this process (a trial task does this first); a run id or
    experiment id left in the environment by `mlflow run` is dropped: the trial reopens its own run. The pickle
    opt-in is the study's, not one left in a reused worker by an earlier study."""
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", TRUST_PICKLE_ENV):
        os.environ.pop(name, None)
    os.environ.update(env)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])


def experiment_name(experiment_id: str) -> str:
    return MlflowClient().get_experiment(experiment_id).name


def schedule_run(experiment_id: str, parent_run_id: str, name: str, tags: Mapping[str, str]) -> str:
    """A run nested under `parent_run_id`, in status SCHEDULED until its trial reopens it. Its owner is this process
    (the study's) until then, so `gc` collects it when the study's process dies before starting it."""
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name=name, tags={**tags, **owner.owner_tags(),
                                                                MLFLOW_PARENT_RUN_ID: parent_run_id,
                                                                MLFLOW_RUN_NAME: name})
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


def end_lost_attempt(run_id: str, attempt: int, reason: str) -> str:
    """The worker running attempt `attempt` of a trial was lost (Ray reported its worker or node dead): end the run
    KILLED if that attempt left it RUNNING or SCHEDULED (nobody else will: its owner is gone, yet on another node
    its heartbeat still looks fresh), tagged with the reason, so the retry can reopen it. Returns the run's status
    now (FINISHED when the attempt had completed before its worker went)."""
    client = MlflowClient()
    status = client.get_run(run_id).info.status
    client.set_tag(run_id, LOST_ATTEMPT_TAG.format(attempt), reason[:5000] or "lost")
    if status in UNFINISHED:
        client.set_terminated(run_id, "KILLED")
        return "KILLED"
    return status


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
