"""Register the Pareto front's models in the MLflow Model Registry, idempotently.

* one registered model per (dataset, arch): ``prune-tracker-<dataset>-<arch>``, or ``registered_name``;
* a version per front run (``runs:/<run_id>/model``), looked up by run id first, so re-running creates no
  duplicate; version tags ``method``, ``accuracy``, ``footprint``, ``ratio``, ...;
* alias ``champion`` on the requested run (e.g. the budget winner) or else the most accurate front model;
* every model is checked before anything is created, and a failure part-way deletes what this call created.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from prune_tracker.compare import RunPoint

CHAMPION_ALIAS = "champion"
MODEL_ARTIFACT = "model"


@dataclass
class RegistrationResult:
    """``versions``: run id -> (registered name, version); ``champions``: name -> champion version."""

    versions: dict[str, tuple[str, str]] = field(default_factory=dict)
    champions: dict[str, str] = field(default_factory=dict)
    created: list[tuple[str, str]] = field(default_factory=list)

    def champion_uri(self, name: str) -> str:
        return f"models:/{name}@{CHAMPION_ALIAS}"


def registered_model_name(dataset: str, arch: str) -> str:
    """``prune-tracker-cifar10-resnet20`` (lower case; characters other than [a-z0-9_.-] become ``-``)."""
    raw = f"prune-tracker-{dataset or 'unknown'}-{arch or 'unknown'}".lower()
    return re.sub(r"[^a-z0-9_.-]+", "-", raw)


def find_version(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The oldest existing version of ``name`` made from ``run_id`` (None when there is none)."""
    found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return min(found, key=lambda v: int(v.version), default=None)


def _group(points: Sequence[RunPoint], registered_name: str | None) -> dict[str, list[RunPoint]]:
    groups: dict[str, list[RunPoint]] = {}
    for p in points:
        groups.setdefault(registered_name or registered_model_name(p.dataset, p.arch), []).append(p)
    return groups


def _champion(points: list[RunPoint], champion_run_id: str | None) -> RunPoint:
    for p in points:
        if p.run_id == champion_run_id:
            return p
    return min(points, key=lambda p: (-p.accuracy, p.footprint, p.run_id))


def _validate(points: Sequence[RunPoint], champion_run_id: str | None) -> None:
    """Fail before creating anything: every run must hold a loadable ``model`` and the champion be a point."""
    if champion_run_id is not None and champion_run_id not in {p.run_id for p in points}:
        raise ValueError(f"champion run {champion_run_id} is not among the points to register")
    for p in points:
        try:
            mlflow.models.get_model_info(f"runs:/{p.run_id}/{MODEL_ARTIFACT}")
        except (MlflowException, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"run {p.run_id} has no model at runs:/{p.run_id}/{MODEL_ARTIFACT}: {first}"
            ) from None


def _version_tags(p: RunPoint) -> dict[str, str]:
    comp = p.compression
    return {
        "method": p.method,
        "accuracy": f"{p.accuracy:.6g}",
        "footprint": f"{p.footprint:.0f}",
        "ratio": "" if p.ratio is None else f"{p.ratio:g}",
        "stage": p.stage,
        "dataset": p.dataset,
        "arch": p.arch,
        "compression": "" if comp is None else f"{comp:.4g}",
    }


def _ensure_model(client: MlflowClient, name: str, created_models: list[str]) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, tags={"created_by": "prune-tracker"})
        created_models.append(name)


def _ensure_version(client: MlflowClient, name: str, p: RunPoint, result: RegistrationResult) -> ModelVersion:
    version = find_version(client, name, p.run_id)
    if version is None:
        version = mlflow.register_model(f"runs:/{p.run_id}/{MODEL_ARTIFACT}", name, tags=_version_tags(p))
        result.created.append((name, version.version))
    else:
        for key, value in _version_tags(p).items():
            if version.tags.get(key) != value:
                client.set_model_version_tag(name, version.version, key, value)
    return version


def _rollback(client: MlflowClient, result: RegistrationResult, created_models: list[str]) -> None:
    for name, version in reversed(result.created):
        with suppress(MlflowException):
            client.delete_model_version(name, version)
    for name in created_models:
        with suppress(MlflowException):
            client.delete_registered_model(name)


def register_front(
    points: Sequence[RunPoint],
    registered_name: str | None = None,
    champion_run_id: str | None = None,
    client: MlflowClient | None = None,
) -> RegistrationResult:
    """Register ``runs:/<id>/model`` of every point; alias ``champion`` per registered model.

    Idempotent (existing versions are found by run id, their tags refreshed). On any failure the versions
    and registered models created by this call are deleted before the exception propagates.
    """
    if not points:
        return RegistrationResult()
    client = client or MlflowClient()
    _validate(points, champion_run_id)
    result, created_models = RegistrationResult(), []
    try:
        for name, group in _group(points, registered_name).items():
            _ensure_model(client, name, created_models)
            for p in group:
                result.versions[p.run_id] = (name, _ensure_version(client, name, p, result).version)
            champion = _champion(group, champion_run_id)
            version = result.versions[champion.run_id][1]
            client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
            result.champions[name] = version
    except Exception:
        _rollback(client, result, created_models)
        raise
    return result
