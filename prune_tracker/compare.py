"""Compare pruned runs: "best accuracy at the smallest memory footprint".

Library API (the CLI / entry point calls these):

* :func:`query_runs` reads candidate runs from MLflow (server-side filters, paginated) and reports runs
  lacking the accuracy or footprint metric in ``missing`` instead of dropping them silently.
* :func:`pareto_front`, :func:`best_under_budget`, :func:`smallest_above_floor` answer the question.
* :func:`format_table`, :func:`table_rows`, :func:`rows_to_csv`, :func:`rows_to_json` and
  :func:`compare_figure` present the answer; :func:`run_compare` does it all and logs a ``compare`` run.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field
from typing import Any

import mlflow
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from prune_tracker.footprint import human_bytes, parse_bytes

FOOTPRINT_METRICS: tuple[str, ...] = (
    "footprint_fp32_bytes",
    "footprint_fp16_bytes",
    "footprint_csr_fp32_bytes",
    "footprint_csr_fp16_bytes",
    "footprint_bitmask_fp16_bytes",
    "footprint_best_bytes",
    "activation_peak_fp32_bytes",
    "activation_peak_fp16_bytes",
    "total_fp16_best_bytes",
    "micronet_score",
    "flops_dense",
    "flops_effective",
    "params_nonzero",
)


def footprint_text(value: float, footprint_name: str) -> str:
    """Human units for byte metrics; plain figures for MicroNet scores, MACs and parameter counts."""
    return human_bytes(value) if footprint_name.endswith("_bytes") else f"{value:.4g}"

NON_MODEL_STAGES = frozenset({"compare", "report", "evaluate", "pipeline"})  # runs that log no model of their own
PAGE_SIZE = 50_000
_IN_CHUNK = 100
_MAX_CHAIN = 64


@dataclass(frozen=True)
class RunPoint:
    """A finished run as a point (footprint, accuracy); ``root_*``: its unpruned (stage=train) ancestor."""

    run_id: str
    experiment: str
    method: str
    ratio: float | None
    stage: str
    dataset: str
    arch: str
    accuracy: float
    footprint: float
    parent_run_id: str | None = None
    root_run_id: str | None = None
    root_footprint: float | None = None
    tags: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    metrics: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    @property
    def compression(self) -> float | None:
        """root_footprint / footprint (1.0 for a train run), None when the root is unknown."""
        if not self.root_footprint or self.footprint <= 0:
            return None
        return self.root_footprint / self.footprint

    @property
    def is_unpruned(self) -> bool:
        return self.stage == "train"


@dataclass
class CompareResult:
    candidates: list[RunPoint]
    missing: list[tuple[str, str]]
    front: list[RunPoint]
    best_under_budget: RunPoint | None
    smallest_above_floor: RunPoint | None
    budget_bytes: float | None
    min_accuracy: float | None
    metric: str
    footprint: str
    table: str
    run_id: str | None = None
    registration: Any = None


# --------------------------------------------------------------------------------------------- query


def _quote(value: str) -> str:
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
            clauses.append(f"tags.{key} = {_quote(value)}")
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


def _search_pages(
    client: MlflowClient, experiment_ids: list[str], filter_string: str, shown: str
) -> list[Run]:
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


def _validate_metric_names(metric: str, footprint: str) -> None:
    if footprint not in FOOTPRINT_METRICS:
        raise ValueError(f"unknown footprint metric {footprint!r}; allowed: {', '.join(FOOTPRINT_METRICS)}")
    if not metric or not isinstance(metric, str):
        raise ValueError("metric must be a metric name such as test_accuracy or val_accuracy")


def _ratio(run: Run) -> float | None:
    raw = run.data.params.get("ratio", run.data.tags.get("ratio"))
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _missing_reason(run: Run, metric: str, footprint: str) -> str | None:
    lacks = [m for m in (metric, footprint) if m not in run.data.metrics]
    if lacks:
        return "missing metric " + ", ".join(lacks)
    bad = [m for m in (metric, footprint) if not math.isfinite(run.data.metrics[m])]
    return "non-finite metric " + ", ".join(bad) if bad else None


def _to_point(run: Run, experiment: str, metric: str, footprint: str) -> RunPoint:
    tags, params = run.data.tags, run.data.params
    return RunPoint(
        run_id=run.info.run_id,
        experiment=experiment,
        method=tags.get("method", params.get("method", "none")),
        ratio=_ratio(run),
        stage=tags.get("stage", ""),
        dataset=tags.get("dataset", params.get("dataset", "")),
        arch=tags.get("arch", params.get("arch", "")),
        accuracy=float(run.data.metrics[metric]),
        footprint=float(run.data.metrics[footprint]),
        parent_run_id=tags.get("parent_run_id") or None,
        tags={k: v for k, v in tags.items() if not k.startswith("mlflow.")},
        metrics=dict(run.data.metrics),
    )


def _fetch_runs(client: MlflowClient, experiment_ids: list[str], run_ids: set[str]) -> dict[str, Run]:
    """Runs by id: batched ``run_id IN`` searches in the given experiments, then get_run for the rest."""
    found: dict[str, Run] = {}
    ids = sorted(run_ids)
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = ", ".join(_quote(r) for r in ids[i : i + _IN_CHUNK])
        for run in search_all(client, experiment_ids, f"attributes.run_id IN ({chunk})"):
            found[run.info.run_id] = run
    for run_id in run_ids - set(found):
        with suppress(MlflowException):  # deleted / unreachable parent: the chain stays unresolved
            found[run_id] = client.get_run(run_id)
    return found


def _resolve_roots(
    client: MlflowClient, experiment_ids: list[str], runs: dict[str, Run], footprint: str
) -> dict[str, tuple[str, float] | None]:
    """run id -> (root run id, root footprint) following parent_run_id to the first stage=train run."""
    for _ in range(_MAX_CHAIN):
        wanted = {p for r in runs.values() if (p := r.data.tags.get("parent_run_id")) and p not in runs}
        if not wanted:
            break
        fetched = _fetch_runs(client, experiment_ids, wanted)
        runs.update(fetched)
        if not fetched:
            break
    return {run_id: _root_of(run_id, runs, footprint) for run_id in runs}


def _root_of(run_id: str, runs: dict[str, Run], footprint: str) -> tuple[str, float] | None:
    seen: set[str] = set()
    current = runs.get(run_id)
    while current is not None and current.info.run_id not in seen:
        seen.add(current.info.run_id)
        if current.data.tags.get("stage") == "train":
            value = current.data.metrics.get(footprint)
            return (current.info.run_id, value) if value is not None else None
        current = runs.get(current.data.tags.get("parent_run_id", ""))
    return None


def query_runs(
    experiment_names: list[str],
    dataset: str | None = None,
    arch: str | None = None,
    method: str | None = None,
    stage: str | None = None,
    filter_string: str | None = None,
    metric: str = "test_accuracy",
    footprint: str = "footprint_best_bytes",
    client: MlflowClient | None = None,
) -> tuple[list[RunPoint], list[tuple[str, str]]]:
    """Finished model runs of the experiments as points, plus ``(run_id, reason)`` for runs lacking metrics.

    ``compare`` / ``report`` runs are not model runs and are skipped unless ``stage`` asks for them.
    """
    _validate_metric_names(metric, footprint)
    client = client or MlflowClient()
    experiments = resolve_experiments(client, experiment_names)
    exp_ids = list(experiments)
    query = build_filter(dataset, arch, method, stage, filter_string)
    runs = search_all(client, exp_ids, query, filter_string)
    runs = [r for r in runs if stage is not None or r.data.tags.get("stage") not in NON_MODEL_STAGES]
    points, missing = [], []
    for run in runs:
        reason = _missing_reason(run, metric, footprint)
        if reason:
            missing.append((run.info.run_id, reason))
        else:
            points.append(_to_point(run, experiments[run.info.experiment_id], metric, footprint))
    roots = _resolve_roots(client, exp_ids, {r.info.run_id: r for r in runs}, footprint)
    points = [_with_root(p, roots.get(p.run_id)) for p in points]
    return sorted(points, key=_front_key), sorted(missing)


def _with_root(point: RunPoint, root: tuple[str, float] | None) -> RunPoint:
    if root is None:
        return point
    return RunPoint(**{**_shallow(point), "root_run_id": root[0], "root_footprint": root[1]})


def _shallow(point: RunPoint) -> dict[str, Any]:
    return {f: getattr(point, f) for f in point.__dataclass_fields__}


# ------------------------------------------------------------------------------------------- answers


def _front_key(p: RunPoint) -> tuple[float, float, str]:
    return (p.footprint, -p.accuracy, p.run_id)


def pareto_front(points: Iterable[RunPoint]) -> list[RunPoint]:
    """Non-dominated points, sorted by footprint ascending (then accuracy descending, run id).

    ``q`` dominates ``p`` when ``q.footprint <= p.footprint`` and ``q.accuracy >= p.accuracy`` with at least
    one of the two strict. So exact duplicates (same footprint and accuracy) are all kept, a point with the
    same accuracy at a larger footprint is dropped, and so is one with lower accuracy at the same footprint.
    O(n log n): one sort, then a sweep keeping the best accuracy seen at strictly smaller footprints.
    """
    ordered = sorted(points, key=_front_key)
    front: list[RunPoint] = []
    best_smaller = -math.inf  # best accuracy among strictly smaller footprints
    i = 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j].footprint == ordered[i].footprint:
            j += 1
        group_best = ordered[i].accuracy  # the group is sorted by accuracy descending
        if group_best > best_smaller:
            front.extend(p for p in ordered[i:j] if p.accuracy == group_best)
            best_smaller = group_best
        i = j
    return front


def best_under_budget(points: Iterable[RunPoint], budget_bytes: float) -> RunPoint | None:
    """Most accurate point with ``footprint <= budget_bytes``; ties: smaller footprint, then smaller run id.

    None when nothing fits.
    """
    fits = [p for p in points if p.footprint <= budget_bytes]
    return min(fits, key=lambda p: (-p.accuracy, p.footprint, p.run_id), default=None)


def smallest_above_floor(points: Iterable[RunPoint], min_accuracy: float) -> RunPoint | None:
    """Smallest-footprint point with ``accuracy >= min_accuracy``; ties: higher accuracy, then run id.

    None when nothing reaches the floor.
    """
    fits = [p for p in points if p.accuracy >= min_accuracy]
    return min(fits, key=_front_key, default=None)


def parse_budget(budget: str | float | int | None) -> float | None:
    """``"1.5MB"``, ``"300 KiB"``, ``1e6`` -> bytes (via footprint.parse_bytes for strings)."""
    if budget is None:
        return None
    if isinstance(budget, int | float):
        return float(budget)
    return float(parse_bytes(budget))


# ------------------------------------------------------------------------------------------ present

TABLE_COLUMNS = (
    "front",
    "method",
    "stage",
    "ratio",
    "accuracy",
    "footprint",
    "footprint_bytes",
    "compression",
    "dataset",
    "arch",
    "experiment",
    "run_id",
    "parent_run_id",
)


def table_rows(
    points: Sequence[RunPoint], footprint_name: str, front: Sequence[RunPoint] | None = None
) -> list[dict[str, Any]]:
    """One dict per point (CSV / JSON rows); ``front`` is True for points on the Pareto front."""
    on_front = {p.run_id for p in (front if front is not None else pareto_front(points))}
    rows = []
    for p in sorted(points, key=_front_key):
        comp = p.compression
        rows.append(
            {
                "front": p.run_id in on_front,
                "method": p.method,
                "stage": p.stage,
                "ratio": p.ratio,
                "accuracy": p.accuracy,
                "footprint": footprint_text(p.footprint, footprint_name),
                "footprint_bytes": p.footprint,
                "compression": round(comp, 4) if comp is not None else None,
                "dataset": p.dataset,
                "arch": p.arch,
                "experiment": p.experiment,
                "run_id": p.run_id,
                "parent_run_id": p.parent_run_id,
                "footprint_metric": footprint_name,
            }
        )
    return rows


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def rows_to_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(rows), indent=2)


def _fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:g}"


def format_table(
    points: Sequence[RunPoint], footprint_name: str, front: Sequence[RunPoint] | None = None
) -> str:
    """Fixed-width text table (``*`` marks the Pareto front), sorted by footprint."""
    header = ("", "method", "ratio", "accuracy", footprint_name, "compression", "run id")
    lines = [header]
    for r in table_rows(points, footprint_name, front):
        comp = "-" if r["compression"] is None else f"{r['compression']:.2f}x"
        lines.append(
            (
                "*" if r["front"] else "",
                r["method"],
                _fmt_ratio(r["ratio"]),
                f"{r['accuracy']:.4f}",
                r["footprint"],
                comp,
                r["run_id"],
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def compare_figure(
    points: Sequence[RunPoint],
    front: Sequence[RunPoint],
    footprint_name: str,
    metric: str = "accuracy",
    title: str | None = None,
) -> Figure:
    """Accuracy vs footprint (log x), one colour per method, front as a step line, unpruned runs as stars."""
    fig = Figure(figsize=(8, 5), dpi=100)
    ax = fig.add_subplot()
    methods = sorted({p.method for p in points})
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for m in methods:
        pts = [p for p in points if p.method == m and not p.is_unpruned]
        if pts:
            ax.scatter(
                [p.footprint for p in pts],
                [p.accuracy for p in pts],
                s=22,
                alpha=0.75,
                color=colours[m],
                label=m,
            )
    base = [p for p in points if p.is_unpruned]
    if base:
        ax.scatter(
            [p.footprint for p in base],
            [p.accuracy for p in base],
            marker="*",
            s=180,
            facecolor="gold",
            edgecolor="black",
            zorder=4,
            label="unpruned (train)",
        )
    if front:
        fx, fy = [p.footprint for p in front], [p.accuracy for p in front]
        ax.step(fx, fy, where="post", color="black", lw=1.3, zorder=3, label="Pareto front")
        ax.scatter(fx, fy, s=60, facecolor="none", edgecolor="black", zorder=5)
    if points and min(p.footprint for p in points) > 0:
        ax.set_xscale("log")
        if footprint_name.endswith("_bytes"):
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: human_bytes(x)))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: human_bytes(x) if str(x)[0] in "25" else ""))
    ax.set_xlabel(f"{footprint_name} (log scale)")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs {footprint_name}")
    ax.grid(True, which="both", alpha=0.3)
    if points:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ run it


def start_logging_run(experiment_name: str, stage: str):  # noqa: ANN201 - a context manager of Run
    """The active run if any (e.g. inside ``mlflow run``), else a new run in ``experiment_name``."""
    active = mlflow.active_run()
    if active is not None:
        return nullcontext(active)
    if os.environ.get("MLFLOW_RUN_ID"):
        return mlflow.start_run()
    mlflow.set_experiment(experiment_name)
    return mlflow.start_run(run_name=stage)


def _log_compare_run(result: CompareResult, experiment_name: str, options: dict[str, Any]) -> str:
    with start_logging_run(experiment_name, "compare") as run:
        mlflow.set_tags({"stage": "compare", "method": "compare"})
        mlflow.log_params({k: v for k, v in options.items() if v is not None})
        rows = table_rows(result.candidates, result.footprint, result.front)
        mlflow.log_text(rows_to_csv(rows), "compare/table.csv")
        mlflow.log_text(rows_to_json(rows), "compare/table.json")
        mlflow.log_text(result.table, "compare/table.txt")
        mlflow.log_dict(
            {
                "missing": [{"run_id": r, "reason": why} for r, why in result.missing],
                "front": [p.run_id for p in result.front],
                **_answers(result),
            },
            "compare/summary.json",
        )
        fig = compare_figure(result.candidates, result.front, result.footprint, result.metric)
        mlflow.log_figure(fig, "compare/front.png")
        mlflow.log_metrics(
            {"n_runs": len(result.candidates), "n_front": len(result.front), "n_missing": len(result.missing)}
        )
        for key, point in (("budget", result.best_under_budget), ("floor", result.smallest_above_floor)):
            if point is not None:
                mlflow.set_tag(f"{key}_winner_run_id", point.run_id)
                mlflow.log_metrics(
                    {f"{key}_winner_accuracy": point.accuracy, f"{key}_winner_footprint": point.footprint}
                )
        return run.info.run_id


def _answers(result: CompareResult) -> dict[str, Any]:
    def brief(p: RunPoint | None) -> dict[str, Any] | None:
        if p is None:
            return None
        d = asdict(p)
        d.pop("tags"), d.pop("metrics")
        return d | {"compression": p.compression}

    return {
        "budget_bytes": result.budget_bytes,
        "best_under_budget": brief(result.best_under_budget),
        "min_accuracy": result.min_accuracy,
        "smallest_above_floor": brief(result.smallest_above_floor),
    }


def run_compare(
    experiment_names: list[str],
    dataset: str | None = None,
    arch: str | None = None,
    method: str | None = None,
    stage: str | None = None,
    filter_string: str | None = None,
    metric: str = "test_accuracy",
    footprint: str = "footprint_best_bytes",
    budget: str | float | None = None,
    min_accuracy: float | None = None,
    log_run: bool = True,
    log_experiment: str | None = None,
    register: bool = False,
    registered_name: str | None = None,
) -> CompareResult:
    """Query, front, budget/floor answers; log a ``stage=compare`` run (into ``log_experiment`` or the first
    experiment) with table.csv/json, the figure and ``n_runs``/``n_front``/``n_missing``; optionally register
    the front (champion = budget winner, else floor winner, else the most accurate front model)."""
    budget_bytes = parse_budget(budget)
    candidates, missing = query_runs(
        experiment_names, dataset, arch, method, stage, filter_string, metric, footprint
    )
    datasets = sorted({p.dataset for p in candidates})
    if len(datasets) > 1:
        raise ValueError(
            f"the runs found hold {len(datasets)} datasets ({', '.join(datasets)}); accuracies on different "
            "datasets share no front: choose one with dataset=<name>"
        )
    front = pareto_front(candidates)
    result = CompareResult(
        candidates=candidates,
        missing=missing,
        front=front,
        best_under_budget=best_under_budget(candidates, budget_bytes) if budget_bytes is not None else None,
        smallest_above_floor=smallest_above_floor(candidates, min_accuracy)
        if min_accuracy is not None
        else None,
        budget_bytes=budget_bytes,
        min_accuracy=min_accuracy,
        metric=metric,
        footprint=footprint,
        table=format_table(candidates, footprint, front),
    )
    if log_run:
        options = {
            "experiments": ",".join(experiment_names),
            "dataset": dataset,
            "arch": arch,
            "method": method,
            "stage_filter": stage,
            "filter": filter_string,
            "metric": metric,
            "footprint": footprint,
            "budget_bytes": budget_bytes,
            "min_accuracy": min_accuracy,
        }
        result.run_id = _log_compare_run(result, log_experiment or experiment_names[0], options)
    if register and front:
        from prune_tracker.tracking.registry import register_front

        champion = result.best_under_budget or result.smallest_above_floor
        result.registration = register_front(front, registered_name, champion.run_id if champion else None)
    return result
