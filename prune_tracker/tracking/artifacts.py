"""Small MLflow calls for the stage runs that log tables, figures and documents (compare, report), so those
modules need no MLflow import of their own; and a run's training checkpoint (written and read with
`weights_only=True`)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import torch
from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException

from prune_tracker.tracking.errors import artifact_writes
from prune_tracker.tracking.runs import tracked_run


@contextlib.contextmanager
def stage_run(stage: str, experiment_name: str, tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """The active run when there is one (a pipeline step started it), tagged ``stage``; else a new
    ``tracked_run`` of ``stage`` in ``experiment_name`` (under ``mlflow run``: the run it created)."""
    active = mlflow.active_run()
    if active is not None:
        mlflow.set_tags({"stage": stage, **(tags or {})})
        yield active
        return
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
