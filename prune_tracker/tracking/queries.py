"""Read finished runs from MLflow as :class:`~prune_tracker.core.frontier.RunPoint` s, one per (run, precision).

:func:`query_runs` searches with server-side filters (paginated), reports runs lacking the accuracy or
footprint metric in ``missing`` instead of dropping them silently, and follows ``parent_run_id`` to each run's
unpruned (stage=train) root, fetching roots that the filters left out.

Precisions (the metric names: :mod:`prune_tracker.core.frontier`): every run is an fp16 candidate (``<metric>_fp16``
or ``<metric>``, and the ``footprint`` option); a run is an int8 / int4 / w8a8 candidate when it logged that
precision's accuracy or x metric (w8a8 and ort_int8, whose x may be int8's, only when it logged their accuracy),
and is reported missing for it (reason ``"int8: missing metric ..."``) when it logged only one of the two. A
precision the footprint has no counterpart for gives no point.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from prune_tracker.core.footprint import footprint_metrics
from prune_tracker.core.frontier import (
    BASELINE_BASE_TAG,
    FOOTPRINT_SHORTCUTS,
    FP16,
    LEGACY_FOOTPRINTS,
    PRECISIONS,
    RunPoint,
    accuracy_metric,
    borrows_footprint,
    dense_reference,
    footprint_precisions,
    front_key,
    parse_precisions,
    precision_footprint,
    resolve_footprint,
)
from prune_tracker.core.seeds import LOCAL_PARAMS, RUN_URI, recipe_identity, run_seed

DEFAULT_METRIC = "val_accuracy"  # choose on validation; test accuracy is reported beside it
DEFAULT_FOOTPRINT = "footprint_best_bytes"
NON_MODEL_STAGES = frozenset({"compare", "report", "evaluate", "pipeline"})  # runs that log no model of their own
PAGE_SIZE = 50_000
_IN_CHUNK = 100
_MAX_CHAIN = 64


@dataclass(frozen=True)
class RunQuery:
    """Which runs (FINISHED, in ``experiment_names``, matching the tag equalities and the raw MLflow
    ``filter_string``), which two metrics make their points, and at which ``precisions`` (a comma list or a
    sequence of fp16, int8, int4, w8a8, ort_int8; None: every precision the runs logged)."""

    experiment_names: Sequence[str]
    dataset: str | None = None
    arch: str | None = None
    method: str | None = None
    stage: str | None = None
    filter_string: str | None = None
    metric: str = DEFAULT_METRIC
    footprint: str = DEFAULT_FOOTPRINT
    precisions: str | Sequence[str] | None = None

    def server_filter(self) -> str:
        return build_filter(self.dataset, self.arch, self.method, self.stage, self.filter_string)


def quote(value: str) -> str:
    """A string literal for an MLflow filter."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def build_filter(
    dataset: str | None = None,
    arch: str | None = None,
    method: str | None = None,
    stage: str | None = None,
    filter_string: str | None = None,
) -> str:
    """Server-side filter: FINISHED runs, tag equalities from the options, AND the raw filter."""
    clauses = ["attributes.status = 'FINISHED'"]
    for key, value in (("dataset", dataset), ("arch", arch), ("method", method), ("stage", stage)):
        if value is not None:
            clauses.append(f"tags.{key} = {quote(value)}")
    if filter_string and filter_string.strip():
        clauses.append(filter_string.strip())  # MLflow filters have no OR / parentheses: plain AND
    return " and ".join(clauses)


def resolve_experiments(client: MlflowClient, names: Sequence[str]) -> dict[str, str]:
    """experiment id -> name; ValueError listing the known names when one is unknown."""
    if not names:
        raise ValueError("no experiment names given")
    found: dict[str, str] = {}
    unknown = []
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            unknown.append(name)
        else:
            found[exp.experiment_id] = name
    if unknown:
        known = sorted(e.name for e in client.search_experiments(max_results=1000))
        raise ValueError(f"unknown experiment(s) {', '.join(unknown)}; known: {', '.join(known) or '(none)'}")
    return found


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: building thousands of ORM/entity objects otherwise triggers it over and over
    (5,000 runs: ~6-8 s -> ~2-3 s here). Cycles made meanwhile are collected once it is re-enabled."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def search_all(
    client: MlflowClient, experiment_ids: list[str], filter_string: str, shown_filter: str | None = None
) -> list[Run]:
    """Every page of a search (follows page tokens); a bad filter becomes a one-line ValueError naming
    ``shown_filter`` (the user's raw filter) or else ``filter_string``."""
    with _gc_paused():
        return _search_pages(client, experiment_ids, filter_string, shown_filter or filter_string)


def _search_pages(client: MlflowClient, experiment_ids: list[str], filter_string: str, shown: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        try:
            page = client.search_runs(
                experiment_ids, filter_string, ViewType.ACTIVE_ONLY, max_results=PAGE_SIZE, page_token=token
            )
        except MlflowException as exc:
            if exc.error_code != "INVALID_PARAMETER_VALUE":
                raise
            first = str(exc.message).strip().splitlines()[0] if exc.message else "invalid"
            raise ValueError(f"invalid MLflow filter {shown!r}: {first}") from None
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def validate_metric_names(metric: str, footprint: str) -> None:
    allowed = (*footprint_metrics(), *FOOTPRINT_SHORTCUTS, *LEGACY_FOOTPRINTS)
    if footprint not in allowed:
        raise ValueError(f"unknown footprint metric {footprint!r}; allowed: {', '.join(allowed)}")
    if not metric or not isinstance(metric, str):
        raise ValueError("metric must be a metric name such as val_accuracy or test_accuracy")


def query_precisions(precisions: str | Sequence[str] | None, footprint: str) -> tuple[str, ...]:
    """The precisions to make points of: the requested ones (ValueError for an unknown one, or one that has
    no point under ``footprint``), or every precision ``footprint`` has a point for."""
    chosen = parse_precisions(precisions)
    possible = footprint_precisions(footprint)
    if chosen is None:
        return possible
    lacking = [p for p in chosen if p not in possible]
    if lacking:
        raise ValueError(
            f"footprint={resolve_footprint(footprint)} has no {lacking[0]} point (it has: {', '.join(possible)}); "
            "choose other precisions or footprint=best"
        )
    return chosen


def run_ratio(run: Run) -> float | None:
    """The pruning ratio a run applied: the metric ``searched_ratio`` (a byte-target search's result), else the
    metric ``ratio`` (stores before `searched_ratio` logged the search's result there), else the tag (the applied
    ratio), else the param (the requested ratio)."""
    data = run.data
    for raw in (data.metrics.get("searched_ratio"), data.metrics.get("ratio"), data.tags.get("ratio"),
                data.params.get("ratio")):
        if raw is None:
            continue
        with suppress(ValueError):
            return float(raw)
    return None


def _missing_reason(run: Run, metric: str, footprint: str) -> str | None:
    lacks = [m for m in (metric, footprint) if m not in run.data.metrics]
    if lacks:
        return "missing metric " + ", ".join(lacks)
    bad = [m for m in (metric, footprint) if not math.isfinite(run.data.metrics[m])]
    return "non-finite metric " + ", ".join(bad) if bad else None


def _precision_points(
    run: Run, experiment: str, metric: str, footprint: str, precisions: Sequence[str]
) -> tuple[list[RunPoint], list[str]]:
    """The run's points at ``precisions`` and the reasons it has none at some it logged (fp16: always)."""
    points, reasons = [], []
    logged = run.data.metrics
    for precision in precisions:
        x = precision_footprint(footprint, precision)
        if x is None:
            continue
        y = accuracy_metric(metric, precision, logged)
        if precision != FP16 and y not in logged and (x not in logged or borrows_footprint(footprint, precision)):
            continue  # this precision was not measured on this run
        reason = _missing_reason(run, y, x)
        if reason is None:
            points.append(_to_point(run, experiment, y, x, precision))
        else:
            reasons.append(reason if precision == FP16 else f"{precision}: {reason}")
    return points, reasons


def _to_point(run: Run, experiment: str, metric: str, footprint: str, precision: str = FP16) -> RunPoint:
    """The run's point; ``metric`` / ``footprint``: the metric names of that ``precision`` (y and x)."""
    tags, params = run.data.tags, run.data.params
    return RunPoint(
        run_id=run.info.run_id,
        experiment=experiment,
        method=tags.get("method", params.get("method", "none")),
        ratio=run_ratio(run),
        stage=tags.get("stage", ""),
        dataset=tags.get("dataset", params.get("dataset", "")),
        arch=tags.get("arch", params.get("arch", "")),
        accuracy=float(run.data.metrics[metric]),
        footprint=float(run.data.metrics[footprint]),
        parent_run_id=tags.get("parent_run_id") or None,
        tags={k: v for k, v in tags.items() if not k.startswith("mlflow.")},
        metrics=dict(run.data.metrics),
        precision=precision,
    )


def fetch_runs(client: MlflowClient, experiment_ids: list[str], run_ids: set[str]) -> dict[str, Run]:
    """Runs by id: batched ``run_id IN`` searches in the given experiments, then get_run for the rest."""
    found: dict[str, Run] = {}
    ids = sorted(run_ids)
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = ", ".join(quote(r) for r in ids[i : i + _IN_CHUNK])
        for run in search_all(client, experiment_ids, f"attributes.run_id IN ({chunk})"):
            found[run.info.run_id] = run
    for run_id in run_ids - set(found):
        with suppress(MlflowException):  # deleted / unreachable parent: the chain stays unresolved
            found[run_id] = client.get_run(run_id)
    return found


def resolve_roots(
    client: MlflowClient, experiment_ids: list[str], runs: dict[str, Run], footprint: str
) -> dict[str, tuple[str, float] | None]:
    """run id -> (root run id, root footprint) following parent_run_id to the first stage=train run."""
    for _ in range(_MAX_CHAIN):
        wanted = {p for r in runs.values() if (p := lineage_parent(r)) and p not in runs}
        if not wanted:
            break
        fetched = fetch_runs(client, experiment_ids, wanted)
        runs.update(fetched)
        if not fetched:
            break
    return {run_id: _root_of(run_id, runs, footprint) for run_id in runs}


def lineage_parent(run: Run) -> str | None:
    """The run a run's size is measured against: its `parent_run_id`; for a train run, the base a dense-small
    baseline stands in for (tag `baseline_base_run_id`), else none (a train run is its own root)."""
    tags = run.data.tags
    if tags.get("stage") == "train":
        return tags.get(BASELINE_BASE_TAG) or None
    return tags.get("parent_run_id") or None


def _root_of(run_id: str, runs: dict[str, Run], footprint: str) -> tuple[str, float] | None:
    seen: set[str] = set()
    current = runs.get(run_id)
    while current is not None and current.info.run_id not in seen:
        seen.add(current.info.run_id)
        if current.data.tags.get("stage") == "train" and not current.data.tags.get(BASELINE_BASE_TAG):
            value = dense_reference(current.data.metrics, footprint)
            return (current.info.run_id, value) if value is not None else None
        current = runs.get(lineage_parent(current) or "")
    return None


def _float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class Lineage:
    """Per run id, what its lineage says: the recipe identity minus the seed (`prune_tracker.core.seeds`) and the
    training epochs spent from scratch (train: epochs; prune: + finetune_epochs + the method's own retraining,
    metric method_finetune_epochs; finetune: + epochs). Memoised over `runs` (the runs and their ancestors)."""

    def __init__(self, runs: dict[str, Run]):
        self.runs = runs
        self._identity: dict[str, str] = {}
        self._budget: dict[str, float | None] = {}
        self._seeds: dict[str, tuple[str, ...]] = {}

    def seeds(self, run_id: str, depth: int = 0) -> tuple[str, ...]:
        """The seeds along the lineage, the root's first and the run's own last (`core.seeds.run_seed`)."""
        run = self.runs.get(run_id)
        if run is None or depth > _MAX_CHAIN:
            return ()
        if run_id not in self._seeds:
            parent = lineage_parent(run)
            before = self.seeds(parent, depth + 1) if parent else ()
            self._seeds[run_id] = (*before, run_seed(run.data.params, run.data.tags))
        return self._seeds[run_id]

    def identity(self, run_id: str, depth: int = 0) -> str | None:
        run = self.runs.get(run_id)
        if run is None or depth > _MAX_CHAIN:
            return None
        if run_id not in self._identity:
            parent = run.data.tags.get("parent_run_id")
            parent_identity = (self.identity(parent, depth + 1) or f"run:{parent}") if parent else None
            self._identity[run_id] = recipe_identity(run.data.params, run.data.tags, parent_identity,
                                                     lambda other: self.identity(other, depth + 1))
        return self._identity[run_id]

    def budget(self, run_id: str, depth: int = 0) -> float | None:
        run = self.runs.get(run_id)
        if run is None or depth > _MAX_CHAIN:
            return None
        if run_id not in self._budget:
            self._budget[run_id] = self._own_budget(run, depth)
        return self._budget[run_id]

    def _own_budget(self, run: Run, depth: int) -> float | None:
        params, stage = run.data.params, run.data.tags.get("stage")
        if stage == "train":
            return _float(params.get("epochs"))
        parent = run.data.tags.get("parent_run_id")
        before = self.budget(parent, depth + 1) if parent else None
        if before is None:
            return None
        if stage == "prune":
            spent = (_float(params.get("finetune_epochs")) or 0.0) + (
                _float(run.data.metrics.get("method_finetune_epochs")) or 0.0)
        elif stage == "finetune":
            spent = _float(params.get("epochs")) or 0.0
        else:
            spent = 0.0
        return before + spent


def referenced_runs(runs: dict[str, Run]) -> set[str]:
    """Run ids that parameters name by a `runs:/<id>/...` URI (a distillation teacher) and `runs` lacks."""
    wanted = set()
    for run in runs.values():
        for name, value in run.data.params.items():
            found = RUN_URI.match(str(value)) if name not in LOCAL_PARAMS else None
            if found and found.group(1) not in runs:
                wanted.add(found.group(1))
    return wanted


def query_runs(
    query: RunQuery, client: MlflowClient | None = None
) -> tuple[list[RunPoint], list[tuple[str, str]]]:
    """Finished model runs of the query as points, one per (run, precision) (sorted by footprint), plus
    ``(run_id, reason)`` for runs lacking a metric. ``compare`` / ``report`` / ``evaluate`` / ``pipeline`` runs
    are not model runs and are skipped unless ``query.stage`` asks for them."""
    validate_metric_names(query.metric, query.footprint)
    footprint = resolve_footprint(query.footprint)
    precisions = query_precisions(query.precisions, footprint)
    client = client or MlflowClient()
    experiments = resolve_experiments(client, query.experiment_names)
    exp_ids = list(experiments)
    runs = search_all(client, exp_ids, query.server_filter(), query.filter_string)
    runs = [r for r in runs if query.stage is not None or r.data.tags.get("stage") not in NON_MODEL_STAGES]
    points, missing = [], []
    for run in runs:
        found, reasons = _precision_points(
            run, experiments[run.info.experiment_id], query.metric, footprint, precisions
        )
        points += found
        missing += [(run.info.run_id, reason) for reason in reasons]
    known = {r.info.run_id: r for r in runs}
    roots = resolve_roots(client, exp_ids, known, footprint)  # adds every ancestor to `known`
    if wanted := referenced_runs(known):
        known.update(fetch_runs(client, exp_ids, wanted))
    lineage = Lineage(known)
    points = [_with_lineage(_with_root(p, roots.get(p.run_id)), lineage, roots.get(p.run_id)) for p in points]
    return sorted(points, key=front_key), sorted(missing)


def _with_lineage(point: RunPoint, lineage: Lineage, root: tuple[str, float] | None) -> RunPoint:
    return replace(point, group=lineage.identity(point.run_id), budget_epochs=lineage.budget(point.run_id),
                   root_group=lineage.identity(root[0]) if root else None, seeds=lineage.seeds(point.run_id))


def found_precisions(points: Sequence[RunPoint]) -> tuple[str, ...]:
    """The precisions among ``points``, in PRECISIONS order."""
    present = {p.precision for p in points}
    return tuple(p for p in PRECISIONS if p in present)


def _with_root(point: RunPoint, root: tuple[str, float] | None) -> RunPoint:
    return point if root is None else replace(point, root_run_id=root[0], root_footprint=root[1])
