"""A self-contained HTML report of a pruning lab (inline CSS, base64 PNG figures, no external URL).

Sections: key answers, per-method summary, the runs table, accuracy-vs-footprint fronts per dataset (a marker
per precision), a sparsity x precision table, accuracy-vs-pruning-ratio curves per method and precision,
per-layer sparsity of the front's models (``sparsity.json``) and their footprint breakdown (parameters vs
activations; fp32 / fp16 / CSR / int8 / int4) from metrics and ``footprint.json``. A run is one point per
precision (fp16, int8, int4, w8a8; ``precisions`` option, default every one found).
:func:`run_report` reads the runs (via :func:`prune_tracker.analysis.compare.select`), builds the file and logs it
as ``report/report.html`` of a ``stage=report`` run, so it opens in the MLflow UI. Runs are ranked by
``metric`` (default ``val_accuracy``); the runs table shows ``test_accuracy`` beside it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prune_tracker import tracking
from prune_tracker.analysis.compare import CompareOptions, select
from prune_tracker.analysis.report.breakdown import breakdown_section
from prune_tracker.analysis.report.html import (
    CSS,
    detail_models,
    escape,
    html_table,
)
from prune_tracker.analysis.report.sections import (
    answers_section,
    fronts_section,
    method_summary_section,
    ratio_section,
    runs_table_section,
    sparsity_precision_section,
    sparsity_section,
)
from prune_tracker.analysis.report.worth_it import worth_it_section
from prune_tracker.core.frontier import (
    RunPoint,
    grouped_front,
    resolve_footprint,
)
from prune_tracker.tracking import artifacts
from prune_tracker.tracking.queries import DEFAULT_FOOTPRINT, DEFAULT_METRIC

if TYPE_CHECKING:
    from typing_extensions import Unpack


@dataclass
class ReportResult:
    path: Path
    run_id: str | None
    points: list[RunPoint]
    front: list[RunPoint]
    missing: list[tuple[str, str]]
    precisions: tuple[str, ...] = ()
    aggregate: str = "none"


@dataclass(frozen=True)
class ReportView:
    """What a report shows: the points and their front, the front's models' details (run id -> {"sparsity": ...,
    "footprint": ...}), the axes, the questions asked and their answers' inputs; ``aggregate``: the points are
    averaged over seeds (tables show mean ± std, figures error bars)."""

    points: Sequence[RunPoint]
    front: Sequence[RunPoint]
    runs_details: dict[str, dict[str, Any]] = field(default_factory=dict)
    title: str = "Pruning report"
    footprint_name: str = DEFAULT_FOOTPRINT
    metric: str = DEFAULT_METRIC
    budget_bytes: float | None = None
    min_accuracy: float | None = None
    missing: Sequence[tuple[str, str]] = ()
    aggregate: bool = False


def _sections(view: ReportView) -> list[tuple[str, str]]:
    points, front, footprint, metric = view.points, view.front, view.footprint_name, view.metric
    sections = [
        ("Answers", answers_section(points, front, view.budget_bytes, view.min_accuracy, view.missing)),
        ("Methods", method_summary_section(points, front)),
        ("Accuracy vs footprint (Pareto front per dataset)", fronts_section(points, footprint, metric)),
        ("Is pruning worth it?", worth_it_section(points, footprint, metric, view.aggregate)),
        ("Sparsity x precision", sparsity_precision_section(points, footprint)),
        ("Accuracy vs pruning ratio", ratio_section(points, metric)),
        ("Per-layer sparsity of the front's models", sparsity_section(front, view.runs_details)),
        ("Footprint breakdown of the front's models", breakdown_section(front, view.runs_details)),
        ("All runs", runs_table_section(points, front, footprint, metric, view.aggregate)),
    ]
    if view.missing:
        rows = [[f"<code>{escape(r)}</code>", escape(why)] for r, why in view.missing]
        sections.append(("Runs left out (missing metrics)", html_table(["run id", "reason"], rows, left=2)))
    return sections


def build_report(view: ReportView, out_dir: str | Path, filename: str = "report.html") -> Path:
    """Write ``out_dir/filename`` (one self-contained HTML page)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017 - py3.10 target
    body = "\n".join(f"<section><h2>{escape(h)}</h2>\n{content}</section>" for h, content in _sections(view))
    sub = f"{escape(view.metric)} vs {escape(view.footprint_name)} &middot; generated {stamp}"
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(view.title)}</title>'
        f"<style>{CSS}</style></head><body><main><h1>{escape(view.title)}</h1><div class=sub>{sub}</div>\n"
        f"{body}\n</main></body></html>\n"
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    path.write_text(page, encoding="utf-8")
    return path


def fetch_run_details(run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """run id -> {"sparsity": sparsity.json or None, "footprint": footprint.json or None}."""
    return {
        r: {
            "sparsity": artifacts.load_dict(r, "sparsity.json"),
            "footprint": artifacts.load_dict(r, "footprint.json"),
        }
        for r in run_ids
    }


def run_report(
    experiment_names: list[str],
    out_dir: str | Path | None = None,
    *,
    log_run: bool = True,
    log_experiment: str | None = None,
    **options: Unpack[CompareOptions],
) -> ReportResult:
    """Query, build the HTML and log it as ``report/report.html`` of a ``stage=report`` run.

    ``precisions`` (in ``options``): "fp16,int8", a sequence, or None for every precision found (unknown: a
    ValueError before any query); ``footprint`` may be the shortcut ``best`` / ``total``."""
    footprint = resolve_footprint(options.get("footprint", DEFAULT_FOOTPRINT))
    if not footprint.endswith("_bytes"):
        raise ValueError(f"report footprint={footprint!r} must be a byte metric (footprint_*_bytes, "
                         "activation_peak_*_bytes, total_fp16_best_bytes)")
    chosen = select(experiment_names, options)
    points, missing = chosen.points, chosen.missing
    front = grouped_front(points)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="prune-report-"))
    view = ReportView(points, front, fetch_run_details(p.run_id for p in detail_models(front)),
                      title=f"Pruning report: {', '.join(experiment_names)}", footprint_name=footprint,
                      metric=chosen.query.metric, budget_bytes=chosen.budget_bytes, min_accuracy=chosen.min_accuracy,
                      missing=missing, aggregate=chosen.aggregate == "seed")
    path = build_report(view, out)
    run_id = None
    if log_run:
        with artifacts.stage_run("report", log_experiment or experiment_names[0], {"method": "report"}) as run:
            tracking.log_params({"precisions": ",".join(chosen.precisions), "aggregate": chosen.aggregate})
            tracking.log_metrics({"n_runs": len(points), "n_front": len(front), "n_missing": len(missing)})
            artifacts.log_artifact(path, "report")
            run_id = run.info.run_id
    return ReportResult(path, run_id, points, front, missing, chosen.precisions, chosen.aggregate)
