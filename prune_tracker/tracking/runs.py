"""Runs: the experiment a command logs to, the run it logs in (`tracked_run`: owner tags, heartbeat, an honest end
status), params, metrics, the dataset input, and what a run and its ancestors logged."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from prune_tracker.tracking import owner

_log = logging.getLogger(__name__)

# The MLflow UI opens an experiment of this kind in its table of training runs, not in the GenAI overview.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
LOCAL_UI = "http://127.0.0.1:5000"


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


# ---------------------------------------------------------------- the run a command logs in


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
    from prune_tracker.tracking.gc import default_stale_after, orphan_reason

    run = MlflowClient().get_run(run_id)
    if run.info.status == "RUNNING" and orphan_reason(run, default_stale_after()) is None:
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


# ---------------------------------------------------------------- what a run logs


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
    try:
        mlflow.log_input(dataset, context="training")
    except MlflowException as err:
        # Two runs logging the same dataset at the same moment race on a SQL store's unique key (the server
        # answers BAD_REQUEST "duplicate key ... dataset_pk"): the dataset now exists, so the retry links it.
        if "duplicate key" not in str(err) and "UNIQUE constraint" not in str(err):
            raise
        mlflow.log_input(dataset, context="training")


# ---------------------------------------------------------------- what a run and its ancestors logged


def run_tags(run_id: str) -> dict[str, str]:
    return MlflowClient().get_run(run_id).data.tags


def run_metrics(run_id: str) -> dict[str, float]:
    return MlflowClient().get_run(run_id).data.metrics


def run_params(run_id: str) -> dict[str, str]:
    return MlflowClient().get_run(run_id).data.params


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
