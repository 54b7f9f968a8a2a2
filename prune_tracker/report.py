"""A self-contained HTML report of a pruning lab (inline CSS, base64 PNG figures, no external URL).

Sections: key answers, per-method summary, the runs table, accuracy-vs-footprint fronts per dataset,
accuracy-vs-pruning-ratio curves per method, per-layer sparsity of the front's models (``sparsity.json``) and
their footprint breakdown (parameters vs activations; fp32 / fp16 / CSR) from metrics and ``footprint.json``.
:func:`run_report` queries MLflow (via :func:`prune_tracker.compare.query_runs`), builds the file and logs it
as ``report/report.html`` of a ``stage=report`` run, so it opens in the MLflow UI.
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException

from prune_tracker import compare
from prune_tracker.compare import RunPoint, human_bytes, pareto_front

MAX_TABLE_ROWS = 300
MAX_DETAIL_MODELS = 12
BREAKDOWN_METRICS = (
    ("params fp32", "footprint_fp32_bytes"),
    ("params fp16", "footprint_fp16_bytes"),
    ("params CSR fp32", "footprint_csr_fp32_bytes"),
    ("params CSR fp16", "footprint_csr_fp16_bytes"),
    ("params bitmask fp16", "footprint_bitmask_fp16_bytes"),
    ("params best", "footprint_best_bytes"),
    ("activations fp32", "activation_peak_fp32_bytes"),
    ("activations fp16", "activation_peak_fp16_bytes"),
)
CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1d2733;
background:#f4f6f9}
main{max-width:1180px;margin:0 auto;padding:24px 32px 48px}
h1{margin:0 0 4px;font-size:28px} h2{margin:36px 0 10px;font-size:21px;border-bottom:2px solid #d6dde6;
padding-bottom:4px} h3{font-size:16px;margin:18px 0 6px}
.sub{color:#5b6776;font-size:13px;margin-bottom:18px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:10px 0}
.card{background:#fff;border:1px solid #d6dde6;border-radius:8px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px} .card span{color:#5b6776;font-size:12px}
.answer{background:#fff;border-left:4px solid #2f7d4f;padding:8px 14px;margin:8px 0;border-radius:4px}
.answer.none{border-left-color:#b54a4a}
table{border-collapse:collapse;background:#fff;font-size:12.5px;width:100%;margin:6px 0}
th,td{border:1px solid #d6dde6;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#e8edf3;position:sticky;top:0} td.l,th.l{text-align:left}
tr.front td{background:#eaf6ee;font-weight:600} code{font-size:11.5px;color:#44515f}
img{max-width:100%;background:#fff;border:1px solid #d6dde6;border-radius:6px;margin:6px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:10px}
.note{color:#5b6776;font-size:12.5px} details{margin:6px 0} summary{cursor:pointer;font-weight:600}
"""


@dataclass
class ReportResult:
    path: Path
    run_id: str | None
    points: list[RunPoint]
    front: list[RunPoint]
    missing: list[tuple[str, str]]


# --------------------------------------------------------------------------------------- helpers


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def figure_to_img(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _group(points: Iterable[RunPoint], *keys: str) -> dict[tuple[str, ...], list[RunPoint]]:
    groups: dict[tuple[str, ...], list[RunPoint]] = {}
    for p in points:
        groups.setdefault(tuple(getattr(p, k) for k in keys), []).append(p)
    return dict(sorted(groups.items()))


def _label(p: RunPoint, sep: str = " ") -> str:
    return "unpruned" if p.is_unpruned else f"{p.method}{sep}r={compare._fmt_ratio(p.ratio)}"


def detail_models(front: Sequence[RunPoint], limit: int = MAX_DETAIL_MODELS) -> list[RunPoint]:
    """Up to ``limit`` front models for the detailed sections, taken round-robin over (dataset, arch)."""
    groups = list(_group(front, "dataset", "arch").values())
    picked: list[RunPoint] = []
    for i in range(max((len(g) for g in groups), default=0)):
        picked += [g[i] for g in groups if i < len(g)]
    chosen = {p.run_id for p in picked[:limit]}
    return [p for p in front if p.run_id in chosen]


def _fmt_comp(p: RunPoint) -> str:
    return "-" if p.compression is None else f"{p.compression:.2f}x"


def _table(
    header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1, classes: Sequence[str] = ()
) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(header))
    body = []
    for n, row in enumerate(rows):
        cls = f' class="{classes[n]}"' if n < len(classes) and classes[n] else ""
        cells = "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# -------------------------------------------------------------------------------------- sections


def answers_section(
    points: Sequence[RunPoint],
    front: Sequence[RunPoint],
    budget: float | None,
    floor: float | None,
    missing: Sequence[tuple[str, str]],
) -> str:
    best = max(points, key=lambda p: (p.accuracy, -p.footprint), default=None)
    small = min(points, key=lambda p: (p.footprint, -p.accuracy), default=None)
    comps = [p.compression for p in points if p.compression is not None]
    cards = [
        ("runs compared", len(points)),
        ("on the Pareto front", len(front)),
        ("missing metrics", len(missing)),
        ("best accuracy", f"{best.accuracy:.4f}" if best else "-"),
        ("smallest footprint", human_bytes(small.footprint) if small else "-"),
        ("max compression", f"{max(comps):.1f}x" if comps else "-"),
    ]
    out = ['<div class="cards">'] + [
        f"<div class=card><b>{_e(v)}</b><span>{_e(k)}</span></div>" for k, v in cards
    ]
    out.append("</div>")
    for (dataset, arch), pts in _group(points, "dataset", "arch").items():
        where = f" ({_e(dataset)} / {_e(arch)})"
        if budget is not None:
            question = f"Best accuracy within {human_bytes(budget)}{where}"
            out.append(_answer(question, compare.best_under_budget(pts, budget)))
        if floor is not None:
            question = f"Smallest model with accuracy &ge; {floor:g}{where}"
            out.append(_answer(question, compare.smallest_above_floor(pts, floor)))
    if not points and budget is not None:
        out.append(_answer(f"Best accuracy within {human_bytes(budget)}", None))
    return "\n".join(out)


def _answer(question: str, p: RunPoint | None) -> str:
    if p is None:
        return f'<div class="answer none"><b>{question}:</b> no run fits.</div>'
    return (
        f'<div class="answer"><b>{question}:</b> {_e(p.method)} ratio {_e(compare._fmt_ratio(p.ratio))} '
        f"({_e(p.stage)}), accuracy {p.accuracy:.4f}, {human_bytes(p.footprint)}, {_fmt_comp(p)} "
        f"smaller than its unpruned parent &mdash; run <code>{_e(p.run_id)}</code></div>"
    )


def method_summary_section(points: Sequence[RunPoint], front: Sequence[RunPoint]) -> str:
    on_front = {p.run_id for p in front}
    rows = []
    for (dataset, arch, method), pts in _group(points, "dataset", "arch", "method").items():
        best = max(pts, key=lambda p: (p.accuracy, -p.footprint))
        small = min(pts, key=lambda p: (p.footprint, -p.accuracy))
        comps = [p.compression for p in pts if p.compression is not None]
        rows.append(
            [
                _e(dataset),
                _e(arch),
                _e(method),
                str(len(pts)),
                f"{best.accuracy:.4f}",
                human_bytes(best.footprint),
                human_bytes(small.footprint),
                f"{small.accuracy:.4f}",
                f"{max(comps):.2f}x" if comps else "-",
                str(sum(p.run_id in on_front for p in pts)),
            ]
        )
    header = [
        "dataset",
        "arch",
        "method",
        "runs",
        "best acc",
        "its footprint",
        "smallest footprint",
        "its acc",
        "max compression",
        "on front",
    ]
    return _table(header, rows, left=3)


def runs_table_section(points: Sequence[RunPoint], front: Sequence[RunPoint], footprint_name: str) -> str:
    on_front = {p.run_id for p in front}
    ordered = sorted(points, key=lambda p: (p.run_id not in on_front, p.footprint, -p.accuracy, p.run_id))
    shown = ordered[:MAX_TABLE_ROWS]
    rows = [
        [
            _e(p.method),
            _e(p.stage),
            _e(p.dataset),
            _e(p.arch),
            _e(compare._fmt_ratio(p.ratio)),
            f"{p.accuracy:.4f}",
            human_bytes(p.footprint),
            _fmt_comp(p),
            f"<code>{_e(p.run_id)}</code>",
        ]
        for p in shown
    ]
    header = [
        "method",
        "stage",
        "dataset",
        "arch",
        "ratio",
        "accuracy",
        footprint_name,
        "compression",
        "run id",
    ]
    note = f'<p class="note">Front rows are highlighted. Showing {len(shown)} of {len(points)} runs.</p>'
    classes = ["front" if p.run_id in on_front else "" for p in shown]
    return note + _table(header, rows, left=4, classes=classes)


def fronts_section(points: Sequence[RunPoint], footprint_name: str, metric: str) -> str:
    imgs = []
    for (dataset, arch), pts in _group(points, "dataset", "arch").items():
        fig = compare.compare_figure(pts, pareto_front(pts), footprint_name, metric, f"{dataset} / {arch}")
        imgs.append(figure_to_img(fig, f"front {dataset} {arch}"))
    return "\n".join(imgs) or '<p class="note">No runs.</p>'


def ratio_figure(points: Sequence[RunPoint], metric: str, title: str) -> Figure:
    """Accuracy vs pruning ratio: a line per (method, stage); unpruned runs as a dashed baseline."""
    fig = Figure(figsize=(8, 4.2))
    ax = fig.add_subplot()
    methods = sorted({p.method for p in points if p.stage != "train"})
    for i, m in enumerate(methods):
        for stage, style in (("prune", "--"), ("finetune", "-"), ("evaluate", ":")):
            pts = sorted(
                (p for p in points if p.method == m and p.stage == stage and p.ratio is not None),
                key=lambda p: p.ratio,
            )
            if pts:
                ax.plot(
                    [p.ratio for p in pts],
                    [p.accuracy for p in pts],
                    style,
                    marker="o",
                    ms=4,
                    color=f"C{i % 10}",
                    label=f"{m} ({stage})",
                )
    for p in (p for p in points if p.stage == "train"):
        ax.axhline(p.accuracy, color="grey", ls=":", lw=1)
    if any(p.stage == "train" for p in points):
        ax.plot([], [], color="grey", ls=":", label="unpruned")
    ax.set_xlabel("pruning ratio")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def ratio_section(points: Sequence[RunPoint], metric: str) -> str:
    imgs = [
        figure_to_img(ratio_figure(pts, metric, f"{d} / {a}"), f"ratio {d} {a}")
        for (d, a), pts in _group(points, "dataset", "arch").items()
    ]
    return "\n".join(imgs) or '<p class="note">No runs.</p>'


def sparsity_figure(p: RunPoint, sparsity: dict[str, float]) -> Figure:
    names = list(sparsity)
    fig = Figure(figsize=(5, 0.6 + 0.22 * max(len(names), 3)))
    ax = fig.add_subplot()
    ax.barh(range(len(names)), [float(sparsity[n]) for n in names], color="#3b7dd8")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of zero weights")
    ax.set_title(f"{p.dataset}/{p.arch}: {_label(p)} ({p.stage}) {p.run_id[:8]}", fontsize=9)
    fig.tight_layout()
    return fig


def sparsity_section(front: Sequence[RunPoint], details: dict[str, dict[str, Any]]) -> str:
    imgs = [
        figure_to_img(sparsity_figure(p, sp), f"sparsity {p.run_id}")
        for p in detail_models(front)
        if (sp := (details.get(p.run_id) or {}).get("sparsity"))
    ]
    if not imgs:
        return '<p class="note">No sparsity.json artifacts on the front models.</p>'
    return f'<div class="grid">{"".join(imgs)}</div>'


def breakdown_figure(front: Sequence[RunPoint]) -> Figure | None:
    shown = [(label, key) for label, key in BREAKDOWN_METRICS if any(key in p.metrics for p in front)]
    if not shown or not front:
        return None
    models = list(detail_models(front))
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_subplot()
    width = 0.8 / len(shown)
    for j, (label, key) in enumerate(shown):
        xs = [i + (j - (len(shown) - 1) / 2) * width for i in range(len(models))]
        ax.bar(
            xs,
            [p.metrics.get(key, 0.0) for p in models],
            width,
            label=label,
            color=f"C{j % 10}",
            hatch="//" if key.startswith("activation") else None,
        )
    labels = [f"{p.dataset}\n{_label(p, chr(10))}" for p in models]
    ax.set_xticks(range(len(models)), labels, fontsize=7.5)
    ax.set_yscale("log")
    ax.set_ylabel("bytes (log)")
    ax.set_title("Footprint of the front's models: parameters vs activations")
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _tensor_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    for key in ("tensors", "rows", "params", "parameters", "layers"):
        if isinstance(doc.get(key), list):
            return [r for r in doc[key] if isinstance(r, dict)]
    return []


def _row_bytes(row: dict[str, Any], fmt: str) -> str:
    sizes = row.get("bytes") if isinstance(row.get("bytes"), dict) else row
    value = sizes.get(fmt, sizes.get(f"{fmt}_bytes"))
    return human_bytes(value) if isinstance(value, int | float) else "-"


def tensor_table(doc: dict[str, Any]) -> str:
    formats = ("fp32", "fp16", "csr_fp16", "bitmask_fp16", "best")
    rows = [
        [
            _e(r.get("name", "?")),
            _e(r.get("shape", "")),
            _e(r.get("numel", "")),
            _e(r.get("nonzeros", "")),
            *(_row_bytes(r, f) for f in formats),
            _e(r.get("format", r.get("chosen", ""))),
        ]
        for r in _tensor_rows(doc)
    ]
    if not rows:
        return '<p class="note">footprint.json has no per-tensor rows.</p>'
    return _table(["tensor", "shape", "numel", "nonzeros", *formats, "chosen"], rows, left=2)


def breakdown_section(front: Sequence[RunPoint], details: dict[str, dict[str, Any]]) -> str:
    fig = breakdown_figure(front)
    parts = (
        [figure_to_img(fig, "footprint breakdown")] if fig else ['<p class="note">No footprint metrics.</p>']
    )
    for p in detail_models(front):
        doc = (details.get(p.run_id) or {}).get("footprint")
        if doc:
            title = (
                f"{_e(p.dataset)}/{_e(p.arch)} {_e(_label(p))} ({_e(p.stage)}) &mdash; per-tensor footprint"
            )
            parts.append(
                f"<details><summary>{title} <code>{_e(p.run_id)}</code></summary>{tensor_table(doc)}"
                "</details>"
            )
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ build


def build_report(
    points: Sequence[RunPoint],
    front: Sequence[RunPoint],
    runs_details: dict[str, dict[str, Any]],
    out_dir: str | Path,
    *,
    title: str = "Pruning report",
    footprint_name: str = "footprint_best_bytes",
    metric: str = "test_accuracy",
    budget_bytes: float | None = None,
    min_accuracy: float | None = None,
    missing: Sequence[tuple[str, str]] = (),
    filename: str = "report.html",
) -> Path:
    """Write ``out_dir/filename``; ``runs_details``: run id -> {"sparsity": {...}, "footprint": {...}}."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017 - py3.10 target
    sections = [
        ("Answers", answers_section(points, front, budget_bytes, min_accuracy, missing)),
        ("Methods", method_summary_section(points, front)),
        ("Accuracy vs footprint (Pareto front per dataset)", fronts_section(points, footprint_name, metric)),
        ("Accuracy vs pruning ratio", ratio_section(points, metric)),
        ("Per-layer sparsity of the front's models", sparsity_section(front, runs_details)),
        ("Footprint breakdown of the front's models", breakdown_section(front, runs_details)),
        ("All runs", runs_table_section(points, front, footprint_name)),
    ]
    if missing:
        rows = [[f"<code>{_e(r)}</code>", _e(why)] for r, why in missing]
        sections.append(("Runs left out (missing metrics)", _table(["run id", "reason"], rows, left=2)))
    body = "\n".join(f"<section><h2>{_e(h)}</h2>\n{content}</section>" for h, content in sections)
    sub = f"{_e(metric)} vs {_e(footprint_name)} &middot; generated {stamp}"
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body><main><h1>{_e(title)}</h1><div class=sub>{sub}</div>\n"
        f"{body}\n</main></body></html>\n"
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    path.write_text(page, encoding="utf-8")
    return path


def _load_json_artifact(run_id: str, name: str) -> dict[str, Any] | None:
    try:
        doc = mlflow.artifacts.load_dict(f"runs:/{run_id}/{name}")
    except (MlflowException, OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def fetch_run_details(run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """run id -> {"sparsity": sparsity.json or None, "footprint": footprint.json or None}."""
    return {
        r: {
            "sparsity": _load_json_artifact(r, "sparsity.json"),
            "footprint": _load_json_artifact(r, "footprint.json"),
        }
        for r in run_ids
    }


def grouped_front(points: Sequence[RunPoint]) -> list[RunPoint]:
    """The union of the Pareto fronts of each (dataset, arch): fronts never mix datasets."""
    front = [p for pts in _group(points, "dataset", "arch").values() for p in pareto_front(pts)]
    return sorted(front, key=lambda p: (p.dataset, p.arch, p.footprint, -p.accuracy, p.run_id))


def run_report(
    experiment_names: list[str],
    out_dir: str | Path | None = None,
    *,
    dataset: str | None = None,
    arch: str | None = None,
    method: str | None = None,
    filter_string: str | None = None,
    metric: str = "test_accuracy",
    footprint: str = "footprint_best_bytes",
    budget: str | float | None = None,
    min_accuracy: float | None = None,
    log_run: bool = True,
    log_experiment: str | None = None,
) -> ReportResult:
    """Query, build the HTML and log it as ``report/report.html`` of a ``stage=report`` run."""
    if not footprint.endswith("_bytes"):
        raise ValueError(f"report footprint={footprint!r} must be a byte metric (footprint_*_bytes, "
                         "activation_peak_*_bytes, total_fp16_best_bytes)")
    budget_bytes = compare.parse_budget(budget)
    points, missing = compare.query_runs(
        experiment_names, dataset, arch, method, None, filter_string, metric, footprint
    )
    front = grouped_front(points)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="prune-report-"))
    path = build_report(
        points,
        front,
        fetch_run_details(p.run_id for p in detail_models(front)),
        out,
        title=f"Pruning report: {', '.join(experiment_names)}",
        footprint_name=footprint,
        metric=metric,
        budget_bytes=budget_bytes,
        min_accuracy=min_accuracy,
        missing=missing,
    )
    run_id = None
    if log_run:
        with compare.start_logging_run(log_experiment or experiment_names[0], "report") as run:
            mlflow.set_tags({"stage": "report", "method": "report"})
            mlflow.log_metrics({"n_runs": len(points), "n_front": len(front), "n_missing": len(missing)})
            mlflow.log_artifact(str(path), "report")
            run_id = run.info.run_id
    return ReportResult(path, run_id, points, front, missing)
