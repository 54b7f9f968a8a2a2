"""Small MLflow calls for the stage runs that log tables, figures and documents (compare, report), so those
modules need no MLflow import of their own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException

from prune_tracker.tracking.errors import artifact_writes


@contextlib.contextmanager
def stage_run(stage: str, experiment_name: str, tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """The active run when there is one (a pipeline step started it), tagged ``stage``; else a new
    ``tracked_run`` of ``stage`` in ``experiment_name`` (under ``mlflow run``: the run it created)."""
    active = mlflow.active_run()
    if active is not None:
        mlflow.set_tags({"stage": stage, **(tags or {})})
        yield active
        return
    from prune_tracker.tracking import tracked_run  # the package imports this module: resolve at call time

    with tracked_run(stage, experiment_name, run_name=stage, tags=tags) as run:
        yield run


def set_tags(tags: dict[str, Any]) -> None:
    mlflow.set_tags(tags)


def log_text(text: str, artifact_file: str) -> None:
    with artifact_writes(artifact_file):
        mlflow.log_text(text, artifact_file)


def log_dict(doc: dict[str, Any], artifact_file: str) -> None:
    with artifact_writes(artifact_file):
        mlflow.log_dict(doc, artifact_file)


def log_figure(figure: Figure, artifact_file: str) -> None:
    """Log a matplotlib figure and release it (pyplot keeps the figures it made alive until closed)."""
    import matplotlib.pyplot as plt

    try:
        with artifact_writes(artifact_file):
            mlflow.log_figure(figure, artifact_file)
    finally:
        plt.close(figure)


def log_artifact(local_path: str | Path, artifact_path: str | None = None) -> None:
    with artifact_writes(artifact_path or Path(local_path).name):
        mlflow.log_artifact(str(local_path), artifact_path)


def load_dict(run_id: str, artifact_file: str) -> dict[str, Any] | None:
    """A JSON artifact of a run as a dict; None when it is absent, unreadable or not a JSON object."""
    try:
        doc = mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact_file}")
    except (MlflowException, OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
