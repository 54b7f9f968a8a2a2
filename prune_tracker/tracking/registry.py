"""Register the Pareto front's models in the MLflow Model Registry, idempotently.

* one registered model per (dataset, arch): ``prune-tracker-<dataset>-<arch>``, or ``registered_name``;
* a version per front point (run, precision): the variant the run logged for that precision
  (``PRECISION_ARTIFACTS``: fp16 -> ``model``, int8 / w8a8 -> ``model_int8``, int4 -> ``model_int4``, ort_int8 ->
  ``model_ort_int8``, an ONNX model), registered
  from its ``models:/<model id>`` URI (registering ``runs:/<id>/model`` makes MLflow 3 look the logged model
  up itself and warn on every version); looked up by run id and the version tag ``precision`` first (a version
  without that tag counts as fp16), so re-running creates no duplicate; version tags ``precision``,
  ``method``, ``accuracy``, ``bytes`` (= ``footprint``), ``ratio``, ...;
* alias ``champion`` on the requested point (e.g. the budget winner) or else the most accurate front point;
* every variant is checked before anything is created, and a failure part-way deletes what this call created
  and points each ``champion`` alias it moved back at its former version.
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

from prune_tracker.core.frontier import FP16, RunPoint
from prune_tracker.tracking import PRECISION_ARTIFACTS, logged_model_uri

CHAMPION_ALIAS = "champion"
PRECISION_TAG = "precision"


@dataclass
class RegistrationResult:
    """``versions``: (run id, precision) -> (registered name, version); ``champions``: name -> champion
    version; ``sources``: (run id, precision) -> the URI registered (or reused) for it."""

    versions: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    champions: dict[str, str] = field(default_factory=dict)
    created: list[tuple[str, str]] = field(default_factory=list)
    former_champions: dict[str, str | None] = field(default_factory=dict, repr=False)
    sources: dict[tuple[str, str], str] = field(default_factory=dict)

    def champion_uri(self, name: str) -> str:
        return f"models:/{name}@{CHAMPION_ALIAS}"


def registered_model_name(dataset: str, arch: str) -> str:
    """``prune-tracker-cifar10-resnet20`` (lower case; characters other than [a-z0-9_.-] become ``-``)."""
    raw = f"prune-tracker-{dataset or 'unknown'}-{arch or 'unknown'}".lower()
    return re.sub(r"[^a-z0-9_.-]+", "-", raw)


def find_version(client: MlflowClient, name: str, run_id: str, precision: str = FP16) -> ModelVersion | None:
    """The oldest existing version of ``name`` made from ``run_id`` at ``precision`` (its version tag
    ``precision``; a version without one, registered before precisions existed, is fp16); None when none."""
    found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    mine = [v for v in found if (v.tags or {}).get(PRECISION_TAG, FP16) == precision]
    return min(mine, key=lambda v: int(v.version), default=None)


def _group(points: Sequence[RunPoint], registered_name: str | None) -> dict[str, list[RunPoint]]:
    groups: dict[str, list[RunPoint]] = {}
    for p in points:
        groups.setdefault(registered_name or registered_model_name(p.dataset, p.arch), []).append(p)
    return groups


def _is_champion(p: RunPoint, run_id: str | None, precision: str | None) -> bool:
    return p.run_id == run_id and (precision is None or p.precision == precision)


def _champion(points: list[RunPoint], champion_run_id: str | None, champion_precision: str | None = None) -> RunPoint:
    best = lambda p: (-p.accuracy, p.footprint, p.run_id, p.precision)  # noqa: E731
    chosen = [p for p in points if _is_champion(p, champion_run_id, champion_precision)]
    return min(chosen or points, key=best)


def variant_uri(p: RunPoint) -> str:
    """The URI to register for the point: ``models:/<model id>`` of the model its run logged for its precision
    (an fp16 point of a run whose ``model`` is a plain run artifact, as MLflow 2 logged it: ``runs:/<id>/model``).
    ValueError naming the run, the precision and the model name when there is none."""
    name = PRECISION_ARTIFACTS.get(p.precision)
    if name is None:
        raise ValueError(f"point {p.run_id} has unknown precision {p.precision!r}; known: "
                         f"{', '.join(PRECISION_ARTIFACTS)}")
    uri = logged_model_uri(p.run_id, name)
    if uri is None and p.precision == FP16:
        uri = f"runs:/{p.run_id}/{name}"  # a model logged as a run artifact has no logged-model entry
    try:
        if uri is None:
            raise MlflowException(f"no logged model named {name!r}")
        if uri.startswith("runs:/"):  # a plain run artifact must hold an MLmodel; logged models exist as such
            mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"run {p.run_id} has no {p.precision} model {name!r} to register: {first}") from None
    return uri


def _validate(
    points: Sequence[RunPoint], champion_run_id: str | None, champion_precision: str | None
) -> dict[tuple[str, str], str]:
    """Fail before creating anything: every point's variant must be a loadable model and the champion a point.
    Returns the URI to register per point key."""
    if champion_run_id is not None and not any(_is_champion(p, champion_run_id, champion_precision) for p in points):
        at = f" at {champion_precision}" if champion_precision else ""
        raise ValueError(f"champion run {champion_run_id}{at} is not among the points to register")
    return {p.key: variant_uri(p) for p in points}


# A w8a8 point registers the run's int8 file: the accuracy tag needs its activation scales calibrated again.
W8A8_NOTE = ("every activation int8 (per-tensor), scales calibrated on training images (prune_tracker.core.quant."
             "calibrate_w8a8); "
             "the file holds the int8 weights")


def _version_tags(p: RunPoint) -> dict[str, str]:
    comp = p.compression
    return {
        PRECISION_TAG: p.precision,
        "method": p.method,
        "accuracy": f"{p.accuracy:.6g}",
        "bytes": f"{p.footprint:.0f}",
        "footprint": f"{p.footprint:.0f}",
        "ratio": "" if p.ratio is None else f"{p.ratio:g}",
        "stage": p.stage,
        "dataset": p.dataset,
        "arch": p.arch,
        "compression": "" if comp is None else f"{comp:.4g}",
        "test_accuracy": "" if p.test_accuracy is None else f"{p.test_accuracy:.6g}",
        **({"activations": W8A8_NOTE} if p.precision == "w8a8" else {}),
        **(_seed_tags(p) if p.n > 1 else {}),
    }


def _seed_tags(p: RunPoint) -> dict[str, str]:
    """A point averaged over seeds (compare aggregate=seed): its accuracy / bytes tags are the means; the version
    is the member closest to the mean."""
    return {"seeds_n": str(p.n), "accuracy_std": "" if p.accuracy_std is None else f"{p.accuracy_std:.6g}",
            "seed_members": " ".join(p.members),
            "seed_note": f"accuracy, test_accuracy and bytes are means over {p.n} seeds; this version is the member "
                         "closest to the mean accuracy"}


def _ensure_model(client: MlflowClient, name: str, created_models: list[str]) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, tags={"created_by": "prune-tracker"})
        created_models.append(name)


def _ensure_version(
    client: MlflowClient, name: str, p: RunPoint, uri: str, result: RegistrationResult
) -> ModelVersion:
    version = find_version(client, name, p.run_id, p.precision)
    if version is None:
        version = mlflow.register_model(uri, name, tags=_version_tags(p))
        result.created.append((name, version.version))
        result.sources[p.key] = uri
    else:
        result.sources[p.key] = version.source
        for key, value in _version_tags(p).items():
            if version.tags.get(key) != value:
                client.set_model_version_tag(name, version.version, key, value)
    return version


def _champion_version(client: MlflowClient, name: str) -> str | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS).version
    except MlflowException:
        return None


def _set_champion(client: MlflowClient, name: str, version: str, result: RegistrationResult) -> None:
    result.former_champions.setdefault(name, _champion_version(client, name))
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    result.champions[name] = version


def _rollback(client: MlflowClient, result: RegistrationResult, created_models: list[str]) -> None:
    for name, former in result.former_champions.items():
        with suppress(MlflowException):
            if former is None:
                client.delete_registered_model_alias(name, CHAMPION_ALIAS)
            else:
                client.set_registered_model_alias(name, CHAMPION_ALIAS, former)
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
    *,
    champion_precision: str | None = None,
) -> RegistrationResult:
    """Register every point's variant (:func:`variant_uri`); alias ``champion`` per registered model, on the
    point (``champion_run_id``, ``champion_precision``; precision None: the run's most accurate point) or
    else the most accurate point.

    Idempotent (existing versions are found by run id and precision, their tags refreshed). On any failure the
    versions and registered models created by this call are deleted, and the champion aliases it moved are set
    back, before the exception propagates.
    """
    if not points:
        return RegistrationResult()
    client = client or MlflowClient()
    uris = _validate(points, champion_run_id, champion_precision)
    result, created_models = RegistrationResult(), []
    try:
        for name, group in _group(points, registered_name).items():
            _ensure_model(client, name, created_models)
            for p in group:
                result.versions[p.key] = (name, _ensure_version(client, name, p, uris[p.key], result).version)
            champion = _champion(group, champion_run_id, champion_precision)
            _set_champion(client, name, result.versions[champion.key][1], result)
    except Exception:
        _rollback(client, result, created_models)
        raise
    return result
