"""The report's sections over points: answers, methods, runs table, fronts, ratio curves, sparsity."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from prune_tracker.analysis.compare import compare_figure, fmt_accuracy, point_method
from prune_tracker.analysis.report.html import (
    MAX_TABLE_ROWS,
    SPARSITY_BIN,
    accuracy_cell,
    decimals,
    detail_models,
    escape,
    figure_to_img,
    html_table,
    point_label,
)
from prune_tracker.core.footprint import human_bytes
from prune_tracker.core.frontier import (
    DENSE_SMALL,
    TEST_METRIC,
    RunPoint,
    answer,
    fmt_compression,
    fmt_ratio,
    group_points,
    pareto_front,
    precision_rank,
)
from prune_tracker.tracking.queries import DEFAULT_METRIC


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
        f"<div class=card><b>{escape(v)}</b><span>{escape(k)}</span></div>" for k, v in cards
    ]
    out.append("</div>")
    for (dataset, arch), pts in group_points(points, "dataset", "arch").items():
        where = f" ({escape(dataset)} / {escape(arch)})"
        answers = answer(pts, budget, floor)
        if budget is not None:
            out.append(_answer(f"Best accuracy within {human_bytes(budget)}{where}", answers.best_under_budget))
        if floor is not None:
            question = f"Smallest model with accuracy &ge; {floor:g}{where}"
            out.append(_answer(question, answers.smallest_above_floor))
    if not points and budget is not None:
        out.append(_answer(f"Best accuracy within {human_bytes(budget)}", None))
    return "\n".join(out)


def _answer(question: str, p: RunPoint | None) -> str:
    if p is None:
        return f'<div class="answer none"><b>{question}:</b> no run fits.</div>'
    return (
        f'<div class="answer"><b>{question}:</b> {escape(p.method)} ratio {escape(fmt_ratio(p.ratio))} '
        f"({escape(p.stage)}, {escape(p.precision)}), accuracy {p.accuracy:.4f} "
        f"(test {fmt_accuracy(p.test_accuracy)}), "
        f"{human_bytes(p.footprint)}, {fmt_compression(p)} "
        f"smaller than its unpruned fp16 parent &mdash; run <code>{escape(p.run_id)}</code></div>"
    )


def method_summary_section(points: Sequence[RunPoint], front: Sequence[RunPoint]) -> str:
    on_front = {p.key for p in front}
    rows = []
    by_method: dict[tuple[str, str, str], list[RunPoint]] = {}
    for p in points:  # dense-small baselines are a row of their own
        by_method.setdefault((p.dataset, p.arch, DENSE_SMALL if p.is_baseline else p.method), []).append(p)
    for (dataset, arch, method), pts in sorted(by_method.items()):
        best = max(pts, key=lambda p: (p.accuracy, -p.footprint))
        small = min(pts, key=lambda p: (p.footprint, -p.accuracy))
        comps = [p.compression for p in pts if p.compression is not None]
        rows.append(
            [
                escape(dataset),
                escape(arch),
                escape(method),
                str(len(pts)),
                f"{best.accuracy:.4f}",
                human_bytes(best.footprint),
                human_bytes(small.footprint),
                f"{small.accuracy:.4f}",
                f"{max(comps):.2f}x" if comps else "-",
                str(sum(p.key in on_front for p in pts)),
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
    return html_table(header, rows, left=3)


def runs_table_section(
    points: Sequence[RunPoint], front: Sequence[RunPoint], footprint_name: str, metric: str = DEFAULT_METRIC,
    aggregate: bool = False,
) -> str:
    """Front points first; the ranking ``metric`` column (at the row's precision), then ``test_accuracy`` unless
    that is the metric; with ``aggregate``, means ± standard deviations over seeds (n)."""
    on_front = {p.key for p in front}
    ordered = sorted(points, key=lambda p: (p.key not in on_front, p.footprint, -p.accuracy, p.run_id,
                                            precision_rank(p.precision)))
    shown = ordered[:MAX_TABLE_ROWS]
    tests = [TEST_METRIC] if metric != TEST_METRIC else []
    rows = [
        [
            escape(point_method(p)),
            escape(p.stage),
            escape(p.dataset),
            escape(p.arch),
            escape(p.precision),
            escape(fmt_ratio(p.ratio)),
            escape(accuracy_cell(p, aggregate)),
            *(escape(accuracy_cell(p, aggregate, test=True)) for _ in tests),
            human_bytes(p.footprint),
            fmt_compression(p),
            f"<code>{escape(p.run_id)}</code>",
        ]
        for p in shown
    ]
    header = [
        "method",
        "stage",
        "dataset",
        "arch",
        "precision",
        "ratio",
        metric,
        *tests,
        footprint_name,
        "compression",
        "run id",
    ]
    note = (f'<p class="note">Front rows are highlighted; a run is a row per precision. Showing {len(shown)} of '
            f"{len(points)} points.</p>")
    classes = ["front" if p.key in on_front else "" for p in shown]
    return note + html_table(header, rows, left=5, classes=classes)


def fronts_section(points: Sequence[RunPoint], footprint_name: str, metric: str) -> str:
    imgs = []
    for (dataset, arch), pts in group_points(points, "dataset", "arch").items():
        fig = compare_figure(pts, pareto_front(pts), footprint_name, metric, f"{dataset} / {arch}")
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
    for p in (p for p in points if p.is_unpruned):
        ax.axhline(p.accuracy, color="grey", ls=":", lw=1)
    if any(p.is_unpruned for p in points):
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
    """One accuracy-vs-ratio figure per (dataset, arch, precision): a precision's accuracies share a curve."""
    groups = group_points(points, "dataset", "arch", "precision")
    only_fp16 = {k[2] for k in groups} == {"fp16"}
    imgs = []
    for (d, a, precision), pts in sorted(groups.items(), key=lambda kv: (*kv[0][:2], precision_rank(kv[0][2]))):
        title = f"{d} / {a}" if only_fp16 else f"{d} / {a} ({precision})"
        imgs.append(figure_to_img(ratio_figure(pts, metric, title), f"ratio {d} {a} {precision}"))
    return "\n".join(imgs) or '<p class="note">No runs.</p>'


def point_sparsity(p: RunPoint) -> float | None:
    """Fraction of zero weights of the point's run: the metric ``sparsity_global``, else
    1 - params_nonzero / params_total, else 0 for an unpruned run, else the pruning ratio; None if unknown."""
    m = p.metrics
    if "sparsity_global" in m:
        return float(m["sparsity_global"])
    if m.get("params_total") and "params_nonzero" in m:
        return 1.0 - float(m["params_nonzero"]) / float(m["params_total"])
    if p.is_unpruned or p.is_baseline:
        return 0.0
    return p.ratio


def sparsity_bin(value: float | None, step: float = SPARSITY_BIN) -> float | None:
    """``value`` rounded (half up) to a multiple of ``step``."""
    if value is None:
        return None
    return round(math.floor(round(value / step, 9) + 0.5) * step, 6)  # round(): 0.95 / 0.1 = 9.4999...


def sparsity_precision_cells(points: Sequence[RunPoint]) -> dict[tuple[float | None, str], RunPoint]:
    """(sparsity bin, precision) -> the most accurate point there (ties: fewer bytes, then run id)."""
    cells: dict[tuple[float | None, str], RunPoint] = {}
    for p in points:
        key = (sparsity_bin(point_sparsity(p)), p.precision)
        held = cells.get(key)
        if held is None or (-p.accuracy, p.footprint, p.run_id) < (-held.accuracy, held.footprint, held.run_id):
            cells[key] = p
    return cells


def sparsity_precision_section(points: Sequence[RunPoint], footprint_name: str) -> str:
    """Per (dataset, arch) a table: rows sparsity (rounded to SPARSITY_BIN), columns precisions; each cell the
    best accuracy at that sparsity and precision, and its bytes."""
    parts = []
    for (dataset, arch), pts in group_points(points, "dataset", "arch").items():
        cells = sparsity_precision_cells(pts)
        precisions = sorted({p for _, p in cells}, key=precision_rank)
        bins = sorted({b for b, _ in cells}, key=lambda b: (b is None, b or 0.0))
        rows = []
        for b in bins:
            row = ["?" if b is None else f"{b:.{decimals(SPARSITY_BIN)}f}"]
            for precision in precisions:
                p = cells.get((b, precision))
                row.append("-" if p is None else f"{p.accuracy:.4f}<br><code>{human_bytes(p.footprint)}</code>")
            rows.append(row)
        parts.append(f"<h3>{escape(dataset)} / {escape(arch)}</h3>"
                     + html_table(["sparsity", *precisions], rows, left=1))
    if not parts:
        return '<p class="note">No runs.</p>'
    note = (f'<p class="note">Best accuracy and its {escape(footprint_name)} (the precision\'s counterpart) '
            f"per sparsity (sparsity_global rounded to {SPARSITY_BIN:g}) and precision.</p>")
    return note + "\n".join(parts)


def sparsity_figure(p: RunPoint, sparsity: dict[str, float]) -> Figure:
    names = list(sparsity)
    fig = Figure(figsize=(5, 0.6 + 0.22 * max(len(names), 3)))
    ax = fig.add_subplot()
    ax.barh(range(len(names)), [float(sparsity[n]) for n in names], color="#3b7dd8")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of zero weights")
    ax.set_title(f"{p.dataset}/{p.arch}: {point_label(p)} ({p.stage}) {p.run_id[:8]}", fontsize=9)
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
