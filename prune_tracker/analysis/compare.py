"""Compare pruned runs: "best accuracy at the smallest memory footprint".

Library API (the CLI / entry point calls these):

* :func:`select` reads the candidate runs (via :mod:`prune_tracker.tracking.queries`) and parses the budget;
  the front and the budget / floor answers come from :mod:`prune_tracker.core.frontier`.
* :func:`format_table`, :func:`table_rows`, :func:`rows_to_csv`, :func:`rows_to_json` and
  :func:`compare_figure` present the answer; :func:`run_compare` does it all and logs a ``compare`` run.

Runs are ranked by ``metric`` (default ``val_accuracy``: choose on validation); the table shows the test
accuracy beside it when the ranking metric is another one. A run is one point per deployment precision
(``precisions``: fp16, int8, int4, w8a8; default every one found): its accuracy is ``<metric>_<p>`` and its
footprint the precision's counterpart of ``footprint`` (rules: :mod:`prune_tracker.core.frontier`), so the front,
the budget and the floor answers pick across precisions, and ``register`` registers the winning variant.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from prune_tracker import tracking
from prune_tracker.core.budget import check_budget, parse_budget
from prune_tracker.core.footprint import human_bytes
from prune_tracker.core.frontier import (
    BASELINE_TAG,
    DENSE_SMALL,
    TEST_METRIC,
    Answers,
    RunPoint,
    accuracy_metric,
    answer,
    check_one_dataset,
    fmt_compression,
    fmt_ratio,
    front_key,
    pareto_front,
    parse_precisions,
    precision_footprint,
    precision_rank,
    resolve_footprint,
)
from prune_tracker.core.seeds import aggregate_points, fmt_mean_std, validate_aggregate
from prune_tracker.tracking import artifacts
from prune_tracker.tracking.queries import DEFAULT_METRIC, RunQuery, found_precisions, query_runs
from prune_tracker.tracking.registry import RegistrationResult, register_front

if TYPE_CHECKING:
    from typing_extensions import Unpack


class CompareOptions(TypedDict, total=False):
    """What ``compare`` and ``report`` accept besides the experiment names: the :class:`RunQuery` fields
    (``footprint``: a metric or the shortcut ``best`` / ``total``; ``precisions``: "fp16,int8" or a sequence,
    None = every precision found) and the two questions (``budget``: "200KB", 2e5, ...; ``min_accuracy``)."""

    dataset: str | None
    arch: str | None
    method: str | None
    stage: str | None
    filter_string: str | None
    metric: str
    footprint: str
    precisions: str | Sequence[str] | None
    budget: str | float | None
    min_accuracy: float | None
    aggregate: str | None


@dataclass
class Selection:
    query: RunQuery
    points: list[RunPoint]
    missing: list[tuple[str, str]]
    budget_bytes: float | None
    min_accuracy: float | None
    aggregate: str = "none"

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions asked for, else those found among the points."""
        return parse_precisions(self.query.precisions) or found_precisions(self.points)


def select(experiment_names: Sequence[str], options: CompareOptions) -> Selection:
    """Parse the budget, the precisions and ``aggregate`` (bad ones fail before any query), then read the
    candidate runs; ``aggregate="seed"`` makes runs that differ only by seed one point (means, standard deviations,
    n: :mod:`prune_tracker.core.seeds`). The query holds the footprint with its shortcut expanded and the precisions as
    a tuple (or None)."""
    scope: dict[str, Any] = dict(options)
    aggregate = validate_aggregate(scope.pop("aggregate", None))
    budget = scope.pop("budget", None)
    check_budget(budget)
    min_accuracy = scope.pop("min_accuracy", None)
    scope["precisions"] = parse_precisions(scope.get("precisions"))
    if "footprint" in scope:
        scope["footprint"] = resolve_footprint(scope["footprint"])
    query = RunQuery(list(experiment_names), **scope)
    points, missing = query_runs(query)
    if aggregate == "seed":
        points = aggregate_points(points)
    return Selection(query, points, missing, parse_budget(budget, _single_base(points)), min_accuracy, aggregate)


def _single_base(points: Sequence[RunPoint]) -> float | None:
    """What a fraction budget (`1/8`) is a fraction of: the dense fp32 reference (`core.frontier.dense_reference`:
    the dense fp32 weights for a weight footprint) of the one unpruned root every point descends from; None when
    the points have several roots or an unknown one."""
    references = {(p.root_run_id, p.root_footprint) for p in points}
    if len(references) != 1:
        return None
    (root, reference), = references
    return reference if root is not None else None


@dataclass
class CompareResult:
    candidates: list[RunPoint]
    missing: list[tuple[str, str]]
    front: list[RunPoint]
    answers: Answers
    metric: str
    footprint: str
    table: str
    run_id: str | None = None
    registration: RegistrationResult | None = None
    precisions: tuple[str, ...] = ()
    aggregate: str = "none"

    @property
    def best_under_budget(self) -> RunPoint | None:
        return self.answers.best_under_budget

    @property
    def smallest_above_floor(self) -> RunPoint | None:
        return self.answers.smallest_above_floor

    @property
    def budget_bytes(self) -> float | None:
        return self.answers.budget_bytes

    @property
    def min_accuracy(self) -> float | None:
        return self.answers.min_accuracy


# ------------------------------------------------------------------------------------------ present


def footprint_text(value: float, footprint_name: str) -> str:
    """Human units for byte metrics; plain figures for MicroNet scores, MACs and parameter counts."""
    return human_bytes(value) if footprint_name.endswith("_bytes") else f"{value:.4g}"


def front_ids(points: Sequence[RunPoint], front: Sequence[RunPoint] | None) -> set[tuple[str, str]]:
    """Keys (run id, precision) of ``front``, or of the points' own Pareto front when it is None."""
    return {p.key for p in (front if front is not None else pareto_front(points))}


def point_metric_names(p: RunPoint, metric: str, footprint_name: str) -> tuple[str, str]:
    """The (accuracy, footprint) metric names the point was made of."""
    x = precision_footprint(footprint_name, p.precision) or footprint_name
    return accuracy_metric(metric, p.precision, p.metrics), x


def point_method(p: RunPoint) -> str:
    """The method column: the pruning method (with ``w<width>`` for a model trained at a width multiplier), or
    ``dense-small <arch> w<width>`` for a dense-small baseline."""
    width = f" w{p.tags['width']}" if p.tags.get("width") else ""
    return f"{DENSE_SMALL} {p.arch}{width}" if p.is_baseline else f"{p.method}{width}"


def table_rows(
    points: Sequence[RunPoint],
    footprint_name: str,
    front: Sequence[RunPoint] | None = None,
    metric: str = DEFAULT_METRIC,
    aggregate: bool = False,
) -> list[dict[str, Any]]:
    """One dict per point (CSV / JSON rows); ``front`` is True for points on the Pareto front; ``accuracy`` is
    the ranking ``metric`` at the row's ``precision``, with a ``test_accuracy`` column beside it unless that is
    the metric; ``accuracy_metric`` / ``footprint_metric`` name the metrics the row's values come from;
    ``baseline`` is ``dense-small`` for a dense-small baseline (else empty). With ``aggregate`` (points averaged
    over seeds) the accuracies are means, ``<metric>_std`` / ``test_accuracy_std`` their sample standard deviations
    (empty for n=1), ``n`` the number of distinct seeds and ``reruns`` the runs that repeated a seed (averaged into
    it). ``compression``: times smaller than the root's dense fp32 reference (`core.frontier.dense_reference`)."""
    on_front = front_ids(points, front)
    rows = []
    for p in sorted(points, key=front_key):
        comp = p.compression
        test = {} if metric == TEST_METRIC else {TEST_METRIC: p.test_accuracy}
        if aggregate:
            test = {f"{metric}_std": p.accuracy_std, **test,
                    **({} if metric == TEST_METRIC else {f"{TEST_METRIC}_std": p.test_accuracy_std}), "n": p.n,
                    "reruns": p.reruns}
        accuracy_name, footprint_metric = point_metric_names(p, metric, footprint_name)
        rows.append(
            {
                "front": p.key in on_front,
                "method": p.method,
                "stage": p.stage,
                "precision": p.precision,
                "ratio": p.ratio,
                "accuracy": p.accuracy,
                **test,
                "footprint": footprint_text(p.footprint, footprint_name),
                "footprint_bytes": p.footprint,
                "compression": round(comp, 4) if comp is not None else None,
                "dataset": p.dataset,
                "arch": p.arch,
                "baseline": p.tags.get(BASELINE_TAG, ""),
                "budget_epochs": p.budget_epochs,
                "experiment": p.experiment,
                "run_id": p.run_id,
                "parent_run_id": p.parent_run_id,
                **({"members": " ".join(p.members or (p.run_id,))} if aggregate else {}),
                "accuracy_metric": accuracy_name,
                "footprint_metric": footprint_metric,
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


def fmt_accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_table(
    points: Sequence[RunPoint],
    footprint_name: str,
    front: Sequence[RunPoint] | None = None,
    metric: str = DEFAULT_METRIC,
    aggregate: bool = False,
) -> str:
    """Fixed-width text table (``*`` marks the Pareto front), sorted by footprint; the accuracy column is
    named after ``metric``, followed by ``test_accuracy`` unless that is the metric; each row's values are those
    of its ``precision`` (the footprint column: the precision's counterpart of ``footprint_name``). A dense-small
    baseline's method reads ``dense-small <arch> w<width>``. With ``aggregate`` the accuracies read
    ``mean ± std (n=k)`` over distinct seeds (", r reruns" when runs repeated a seed) and the run id is the member
    closest to the mean. The compression column is times smaller than the dense fp32 root."""
    with_test = metric != TEST_METRIC
    header = ("", "method", "ratio", "precision", metric, *([TEST_METRIC] if with_test else []), footprint_name,
              "x smaller (vs fp32)", "run id")
    lines = [header]
    on_front = front_ids(points, front)
    for p in sorted(points, key=front_key):
        if aggregate:
            accuracy = fmt_mean_std(p.accuracy, p.accuracy_std, p.n, reruns=p.reruns)
            test = [fmt_mean_std(p.test_accuracy, p.test_accuracy_std, p.n, reruns=p.reruns)] if with_test else []
        else:
            accuracy, test = fmt_accuracy(p.accuracy), [fmt_accuracy(p.test_accuracy)] if with_test else []
        lines.append(("*" if p.key in on_front else "", point_method(p), fmt_ratio(p.ratio), p.precision,
                      accuracy, *test, footprint_text(p.footprint, footprint_name),
                      fmt_compression(p), p.run_id))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


PRECISION_MARKERS = {"fp16": "o", "int8": "s", "int4": "^", "w8a8": "D"}
DENSE_SMALL_LABEL = "dense-small baseline"


def precision_marker(precision: str) -> str:
    return PRECISION_MARKERS.get(precision, "P")


def compare_figure(
    points: Sequence[RunPoint],
    front: Sequence[RunPoint],
    footprint_name: str,
    metric: str = "accuracy",
    title: str | None = None,
) -> Figure:
    """Accuracy vs footprint (log x), one colour per method, front as a step line, unpruned runs in gold.

    Points of several precisions (or of any but fp16) take one marker per precision (:data:`PRECISION_MARKERS`)
    with a legend entry each; fp16 unpruned runs are stars, quantised ones their precision's marker in gold.
    Dense-small baselines are their precision's marker, white with a red edge; points averaged over seeds carry
    error bars (± one standard deviation of the accuracy)."""
    fig = Figure(figsize=(8, 5), dpi=100)
    ax = fig.add_subplot()
    methods = sorted({p.method for p in points if not p.is_baseline})
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    precisions = sorted({p.precision for p in points}, key=precision_rank)
    labelled: set[str] = set()
    for m in methods:
        for precision in precisions:
            pts = [p for p in points if p.method == m and p.precision == precision and not p.is_unpruned
                   and not p.is_baseline]
            if pts:
                ax.scatter(
                    [p.footprint for p in pts],
                    [p.accuracy for p in pts],
                    s=22,
                    alpha=0.75,
                    color=colours[m],
                    marker=precision_marker(precision),
                    label=None if m in labelled else m,
                )
                labelled.add(m)
    for precision in precisions:
        base = [p for p in points if p.is_unpruned and p.precision == precision]
        if base:
            ax.scatter(
                [p.footprint for p in base],
                [p.accuracy for p in base],
                marker="*" if precision == "fp16" else precision_marker(precision),
                s=180 if precision == "fp16" else 70,
                facecolor="gold",
                edgecolor="black",
                zorder=4,
                label="unpruned (train)" if precision == "fp16" else None,
            )
    _draw_baselines(ax, points, precisions)
    _draw_error_bars(ax, points, colours)
    if any(p.is_unpruned for p in points) and not any(p.is_unpruned and p.precision == "fp16" for p in points):
        ax.scatter([], [], marker="o", s=70, facecolor="gold", edgecolor="black", label="unpruned (train)")
    if precisions != ["fp16"]:
        for precision in precisions:  # marker legend: grey proxies, one per precision
            ax.scatter([], [], marker=precision_marker(precision), s=30, color="grey", label=precision)
    if front:
        fx, fy = [p.footprint for p in front], [p.accuracy for p in front]
        ax.step(fx, fy, where="post", color="black", lw=1.3, zorder=3, label="Pareto front")
        for precision in sorted({p.precision for p in front}, key=precision_rank):  # ring in the point's shape
            ring = [p for p in front if p.precision == precision]
            ax.scatter([p.footprint for p in ring], [p.accuracy for p in ring], s=60, facecolor="none",
                       edgecolor="black", marker=precision_marker(precision), zorder=5)
    if points and min(p.footprint for p in points) > 0:
        ax.set_xscale("log")
        if footprint_name.endswith("_bytes"):
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: human_bytes(x)))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: human_bytes(x) if str(x)[0] in "25" else ""))
    quantised = sorted({p.precision for p in points if p.precision != "fp16"}, key=precision_rank)
    also = f"; {', '.join(quantised)}: their counterparts" if quantised else ""
    ax.set_xlabel(f"{footprint_name} (log scale{also})")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs {footprint_name}")
    ax.grid(True, which="both", alpha=0.3)
    if points:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig




def _draw_baselines(ax, points: Sequence[RunPoint], precisions: Sequence[str]) -> None:
    """Dense-small baselines: each precision's marker, white with a red edge, one legend entry."""
    labelled = False
    for precision in precisions:
        pts = [p for p in points if p.is_baseline and p.precision == precision]
        if pts:
            ax.scatter([p.footprint for p in pts], [p.accuracy for p in pts], s=60, marker=precision_marker(precision),
                       facecolor="white", edgecolor="crimson", linewidths=1.6, zorder=4,
                       label=None if labelled else DENSE_SMALL_LABEL)
            labelled = True


def _draw_error_bars(ax, points: Sequence[RunPoint], colours: dict[str, str]) -> None:
    """± one standard deviation of the accuracy of the points averaged over seeds (n >= 2)."""
    for p in points:
        if p.accuracy_std is not None:
            colour = "crimson" if p.is_baseline else "goldenrod" if p.is_unpruned else colours.get(p.method, "grey")
            ax.errorbar([p.footprint], [p.accuracy], yerr=[p.accuracy_std], fmt="none", ecolor=colour, elinewidth=1,
                        capsize=3, alpha=0.8, zorder=2)


# ------------------------------------------------------------------------------------------ run it


def _log_compare_run(result: CompareResult, query: RunQuery, experiment_name: str,
                     register: Callable[[], None] | None = None) -> str:
    """Log the compare run; `register` runs inside it, so a failed registration ends the run FAILED."""
    with artifacts.stage_run("compare", experiment_name, {"method": "compare"}) as run:
        params = _run_params(query, result.answers) | {"precisions": ",".join(result.precisions),
                                                        "aggregate": result.aggregate}
        tracking.log_params({k: v for k, v in params.items() if v is not None})
        rows = table_rows(result.candidates, result.footprint, result.front, result.metric,
                          aggregate=result.aggregate == "seed")
        artifacts.log_text(rows_to_csv(rows), "compare/table.csv")
        artifacts.log_text(rows_to_json(rows), "compare/table.json")
        artifacts.log_text(result.table, "compare/table.txt")
        summary = {
            "missing": [{"run_id": r, "reason": why} for r, why in result.missing],
            "front": [p.run_id for p in result.front],
            "front_points": [{"run_id": p.run_id, "precision": p.precision} for p in result.front],
            "precisions": list(result.precisions),
            "aggregate": result.aggregate,
            **result.answers.to_dict(),
        }
        artifacts.log_dict(summary, "compare/summary.json")
        fig = compare_figure(result.candidates, result.front, result.footprint, result.metric)
        artifacts.log_figure(fig, "compare/front.png")
        counts = {"n_runs": len(result.candidates), "n_front": len(result.front), "n_missing": len(result.missing)}
        tracking.log_metrics(counts | _winner_metrics(result.answers))
        winners = [(key, p) for key, p in _winners(result.answers) if p is not None]
        artifacts.set_tags({f"{key}_winner_run_id": p.run_id for key, p in winners}
                           | {f"{key}_winner_precision": p.precision for key, p in winners})
        if register is not None:
            register()
        return run.info.run_id


def _run_params(query: RunQuery, answers: Answers) -> dict[str, Any]:
    return {
        "experiments": ",".join(query.experiment_names),
        "dataset": query.dataset,
        "arch": query.arch,
        "method": query.method,
        "stage_filter": query.stage,
        "filter": query.filter_string,
        "metric": query.metric,
        "footprint": query.footprint,
        "budget_bytes": answers.budget_bytes,
        "min_accuracy": answers.min_accuracy,
    }


def _winners(answers: Answers) -> tuple[tuple[str, RunPoint | None], ...]:
    return (("budget", answers.best_under_budget), ("floor", answers.smallest_above_floor))


def _winner_metrics(answers: Answers) -> dict[str, float]:
    metrics = {}
    for key, p in _winners(answers):
        if p is not None:
            metrics |= {f"{key}_winner_accuracy": p.accuracy, f"{key}_winner_footprint": p.footprint}
    return metrics


def run_compare(
    experiment_names: list[str],
    *,
    log_run: bool = True,
    log_experiment: str | None = None,
    register: bool = False,
    registered_name: str | None = None,
    **options: Unpack[CompareOptions],
) -> CompareResult:
    """Query, front, budget/floor answers; log a ``stage=compare`` run (into ``log_experiment`` or the first
    experiment) with table.csv/json, the figure, ``n_runs``/``n_front``/``n_missing`` and the param
    ``precisions`` (those asked for, else those found); optionally register the front's variants (champion =
    budget winner, else floor winner, else the most accurate front point).

    ``precisions`` (in ``options``): "fp16,int8", a sequence, or None for every precision found; an unknown one
    is a ValueError before any query. ``aggregate`` (in ``options``): ``none`` (default) or ``seed``: runs that
    differ only by seed are one point (mean, std, n); the front, the answers and the registration use the means
    (registering each front point's member closest to its mean)."""
    chosen = select(experiment_names, options)
    check_one_dataset(chosen.points)
    query, front = chosen.query, pareto_front(chosen.points)
    result = CompareResult(
        candidates=chosen.points,
        missing=chosen.missing,
        front=front,
        answers=answer(chosen.points, chosen.budget_bytes, chosen.min_accuracy),
        metric=query.metric,
        footprint=query.footprint,
        table=format_table(chosen.points, query.footprint, front, query.metric, aggregate=chosen.aggregate == "seed"),
        precisions=chosen.precisions,
        aggregate=chosen.aggregate,
    )

    def register_winners() -> None:
        champion = result.answers.champion
        result.registration = register_front(
            front,
            registered_name,
            champion.run_id if champion else None,
            champion_precision=champion.precision if champion else None,
        )

    registration = register_winners if register and front else None
    if log_run:
        result.run_id = _log_compare_run(result, query, log_experiment or experiment_names[0], registration)
    elif registration is not None:
        registration()
    return result
