"""A self-contained HTML report of a pruning lab (inline CSS, base64 PNG figures, no external URL).

Sections: key answers, per-method summary, the runs table, accuracy-vs-footprint fronts per dataset (a marker
per precision), a sparsity x precision table, accuracy-vs-pruning-ratio curves per method and precision,
per-layer sparsity of the front's models (``sparsity.json``) and their footprint breakdown (parameters vs
activations; fp32 / fp16 / CSR / int8 / int4) from metrics and ``footprint.json``. A run is one point per
precision (fp16, int8, int4, w8a8, ort_int8; ``precisions`` option, default every one found).
:func:`run_report` reads the runs (via :func:`prune_tracker.analysis.compare.select`), builds the file and logs it
as ``report/report.html`` of a ``stage=report`` run, so it opens in the MLflow UI. Runs are ranked by
``metric`` (default ``val_accuracy``); the runs table shows ``test_accuracy`` beside it.
"""

from __future__ import annotations

import base64
import html
import io
import math
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from prune_tracker import tracking
from prune_tracker.analysis.compare import CompareOptions, compare_figure, fmt_accuracy, point_method, select
from prune_tracker.core.footprint import FORMATS, human_bytes
from prune_tracker.core.frontier import (
    DENSE_SMALL,
    TEST_METRIC,
    RunPoint,
    answer,
    fmt_compression,
    fmt_ratio,
    group_points,
    grouped_front,
    pareto_front,
    precision_rank,
    resolve_footprint,
)
from prune_tracker.core.seeds import fmt_mean_std
from prune_tracker.tracking import artifacts
from prune_tracker.tracking.queries import DEFAULT_FOOTPRINT, DEFAULT_METRIC

if TYPE_CHECKING:
    from typing_extensions import Unpack

MAX_TABLE_ROWS = 300
MAX_DETAIL_MODELS = 12
ACTIVATION_METRICS = (
    ("activations fp32", "activation_peak_fp32_bytes"),
    ("activations fp16", "activation_peak_fp16_bytes"),
    ("activations int8", "activation_peak_int8_bytes"),
)
QUANTISED_METRICS = (  # parameter bytes of the quantised variants (best of dense / CSR / bitmask per weight)
    ("params best int8", "footprint_best_int8_bytes"),
    ("params best int4", "footprint_best_int4_bytes"),
)
SPARSITY_BIN = 0.1  # the sparsity x precision table's rows: sparsity rounded to this step
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
    precisions: tuple[str, ...] = ()
    aggregate: str = "none"


# --------------------------------------------------------------------------------------- helpers


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def figure_to_img(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _label(p: RunPoint, sep: str = " ") -> str:
    if p.is_baseline:
        return point_method(p)
    return "unpruned" if p.is_unpruned else f"{p.method}{sep}r={fmt_ratio(p.ratio)}"


def _accuracy_cell(p: RunPoint, aggregate: bool, test: bool = False) -> str:
    """The (test) accuracy of a row: ``mean ± std (n=k)`` for points averaged over seeds."""
    if not aggregate:
        return fmt_accuracy(p.test_accuracy if test else p.accuracy)
    if test:
        return fmt_mean_std(p.test_accuracy, p.test_accuracy_std, p.n, reruns=p.reruns)
    return fmt_mean_std(p.accuracy, p.accuracy_std, p.n, reruns=p.reruns)


def _label_with_precision(p: RunPoint) -> str:
    return f"{_label(p)} {p.precision}"


def detail_models(front: Sequence[RunPoint], limit: int = MAX_DETAIL_MODELS) -> list[RunPoint]:
    """Up to ``limit`` front runs for the detailed sections (one point per run: its first on the front, as the
    sections show a run's artifacts), taken round-robin over (dataset, arch)."""
    seen: set[str] = set()
    front = [p for p in front if not (p.run_id in seen or seen.add(p.run_id))]
    groups = list(group_points(front, "dataset", "arch").values())
    picked: list[RunPoint] = []
    for i in range(max((len(g) for g in groups), default=0)):
        picked += [g[i] for g in groups if i < len(g)]
    chosen = {p.run_id for p in picked[:limit]}
    return [p for p in front if p.run_id in chosen]


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
    for (dataset, arch), pts in group_points(points, "dataset", "arch").items():
        where = f" ({_e(dataset)} / {_e(arch)})"
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
        f'<div class="answer"><b>{question}:</b> {_e(p.method)} ratio {_e(fmt_ratio(p.ratio))} '
        f"({_e(p.stage)}, {_e(p.precision)}), accuracy {p.accuracy:.4f} (test {fmt_accuracy(p.test_accuracy)}), "
        f"{human_bytes(p.footprint)}, {fmt_compression(p)} "
        f"smaller than its unpruned fp16 parent &mdash; run <code>{_e(p.run_id)}</code></div>"
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
                _e(dataset),
                _e(arch),
                _e(method),
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
    return _table(header, rows, left=3)


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
            _e(point_method(p)),
            _e(p.stage),
            _e(p.dataset),
            _e(p.arch),
            _e(p.precision),
            _e(fmt_ratio(p.ratio)),
            _e(_accuracy_cell(p, aggregate)),
            *(_e(_accuracy_cell(p, aggregate, test=True)) for _ in tests),
            human_bytes(p.footprint),
            fmt_compression(p),
            f"<code>{_e(p.run_id)}</code>",
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
    return note + _table(header, rows, left=5, classes=classes)


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
            row = ["?" if b is None else f"{b:.{_decimals(SPARSITY_BIN)}f}"]
            for precision in precisions:
                p = cells.get((b, precision))
                row.append("-" if p is None else f"{p.accuracy:.4f}<br><code>{human_bytes(p.footprint)}</code>")
            rows.append(row)
        parts.append(f"<h3>{_e(dataset)} / {_e(arch)}</h3>"
                     + _table(["sparsity", *precisions], rows, left=1))
    if not parts:
        return '<p class="note">No runs.</p>'
    note = (f'<p class="note">Best accuracy and its {_e(footprint_name)} (the precision\'s counterpart) '
            f"per sparsity (sparsity_global rounded to {SPARSITY_BIN:g}) and precision.</p>")
    return note + "\n".join(parts)


def _decimals(step: float) -> int:
    text = f"{step:g}"
    return len(text.split(".")[1]) if "." in text else 0


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
    bars = [*((f"params {f.label}", f.metric) for f in FORMATS.values()), *QUANTISED_METRICS, *ACTIVATION_METRICS]
    shown = [(label, key) for label, key in bars if any(key in p.metrics for p in front)]
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
    formats = tuple(FORMATS)
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


# --------------------------------------------------------------------------- is pruning worth it?


@dataclass(frozen=True)
class WorthItPair:
    """A pruned point and the dense-small baseline it is weighed against: the largest baseline at the same
    precision, from the same base recipe (``root_group``), with at most the pruned model's bytes."""

    pruned: RunPoint
    baseline: RunPoint | None

    @property
    def delta(self) -> float | None:
        """Pruned minus dense-small accuracy (the ranking metric's means)."""
        return None if self.baseline is None else self.pruned.accuracy - self.baseline.accuracy

    @property
    def verdict(self) -> str:
        """Who is ahead; with at least two seeds on both sides, only beyond two standard errors of the difference
        (``sqrt(s_p^2 / n_p + s_b^2 / n_b)``), else "within noise"."""
        if self.baseline is None or self.delta is None:
            return "no dense-small baseline at or under these bytes"
        p, b = self.pruned, self.baseline
        ahead = "pruning ahead" if self.delta > 0 else "dense-small ahead" if self.delta < 0 else "tie"
        if p.accuracy_std is None or b.accuracy_std is None:
            return f"{ahead} (single seed: no spread)"
        se = math.sqrt(p.accuracy_std**2 / p.n + b.accuracy_std**2 / b.n)
        return f"{ahead} (beyond 2 SE)" if abs(self.delta) > 2 * se else f"within noise (2 SE = {2 * se:.4f})"


def worth_it_pairs(points: Sequence[RunPoint]) -> list[WorthItPair]:
    """Every pruned (prune / finetune) point that has dense-small baselines from its base recipe, paired with the
    largest one at its precision whose bytes are at most its own (None when all are larger)."""
    baselines = [b for b in points if b.is_baseline and b.root_group]
    groups = {b.root_group for b in baselines}
    pairs = []
    for p in sorted(points, key=lambda q: (q.dataset, precision_rank(q.precision), q.footprint, -q.accuracy)):
        if p.stage not in ("prune", "finetune") or p.root_group not in groups:
            continue
        fits = [b for b in baselines if b.root_group == p.root_group and b.precision == p.precision
                and b.dataset == p.dataset and b.footprint <= p.footprint]
        pairs.append(WorthItPair(p, max(fits, key=lambda b: (b.footprint, b.accuracy), default=None)))
    return pairs


def _budget(p: RunPoint | None) -> str:
    return "-" if p is None or p.budget_epochs is None else f"{p.budget_epochs:g}"


def worth_it_figure(pairs: Sequence[WorthItPair], baselines: Sequence[RunPoint], metric: str, title: str) -> Figure:
    """Accuracy vs bytes: pruned points per method and the dense-small baselines (a red line), error bars ±1 std."""
    fig = Figure(figsize=(8, 4.4))
    ax = fig.add_subplot()
    methods = sorted({pair.pruned.method for pair in pairs})
    for i, method in enumerate(methods):
        pts = sorted((pair.pruned for pair in pairs if pair.pruned.method == method), key=lambda q: q.footprint)
        ax.errorbar([q.footprint for q in pts], [q.accuracy for q in pts],
                    yerr=[q.accuracy_std or 0.0 for q in pts], fmt="o", ms=5, capsize=3, color=f"C{i % 10}",
                    label=f"pruned: {method}")
    dense = sorted(baselines, key=lambda q: q.footprint)
    if dense:
        ax.errorbar([q.footprint for q in dense], [q.accuracy for q in dense],
                    yerr=[q.accuracy_std or 0.0 for q in dense], fmt="s-", ms=6, capsize=3, color="crimson",
                    mfc="white", label="dense-small (same budget)")
    if pairs or dense:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: human_bytes(x)))
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("bytes (log scale)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def worth_it_section(points: Sequence[RunPoint], footprint_name: str, metric: str, aggregate: bool = False) -> str:
    """Pruned vs dense-small at equal bytes (the baseline at most the pruned model's) and equal training budget
    (epochs from scratch: base + retraining vs the baseline's own), per precision; mean ± std over seeds with
    ``aggregate``."""
    pairs = worth_it_pairs(points)
    if not pairs:
        return ('<p class="note">No dense-small baselines among these runs: run <code>main -P baselines=true</code> '
                "(or <code>prune_tracker.studies.baselines.dense_small_baseline</code>) to ask whether pruning beats a "
                "smaller dense model of the same size trained with the same budget.</p>")
    header = ["precision", "pruned", "bytes", metric, "epochs", "dense-small", "bytes", metric, "epochs", "Δ (pt)",
              "verdict"]
    rows = [[_e(pr.pruned.precision), _e(_label(pr.pruned)), human_bytes(pr.pruned.footprint),
             _e(_accuracy_cell(pr.pruned, aggregate)), _budget(pr.pruned),
             _e(point_method(pr.baseline)) if pr.baseline else "-",
             human_bytes(pr.baseline.footprint) if pr.baseline else "-",
             _e(_accuracy_cell(pr.baseline, aggregate)) if pr.baseline else "-", _budget(pr.baseline),
             f"{100 * pr.delta:+.2f}" if pr.delta is not None else "-", _e(pr.verdict)]
            for pr in pairs[:MAX_TABLE_ROWS]]
    imgs = []
    for (dataset, precision), group in sorted(
            _by(pairs, lambda pr: (pr.pruned.dataset, pr.pruned.precision)).items(),
            key=lambda kv: (kv[0][0], precision_rank(kv[0][1]))):
        roots = {pr.pruned.root_group for pr in group}
        dense = [b for b in points if b.is_baseline and b.precision == precision and b.dataset == dataset
                 and b.root_group in roots]
        imgs.append(figure_to_img(worth_it_figure(group, dense, metric, f"{dataset}: pruned vs dense-small "
                                                  f"({precision})"), f"worth it {dataset} {precision}"))
    seeds = "mean ± sample std over seeds (n)" if aggregate else "single runs (compare with aggregate=seed for seeds)"
    note = (f'<p class="note">Each pruned model against the largest dense-small baseline of the same base recipe and '
            f"precision with at most its bytes ({_e(footprint_name)} or its precision's counterpart), both trained "
            f"from scratch for the epochs shown (pruned: base + every retraining); {seeds}. Δ = pruned − "
            "dense-small; a verdict needs |Δ| beyond two standard errors of the difference.</p>")
    return note + _table(header, rows, left=2) + "\n".join(imgs)


def _by(items: Iterable[Any], key) -> dict[Any, list[Any]]:
    out: dict[Any, list[Any]] = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return out


# ------------------------------------------------------------------------------------------ build


def build_report(
    points: Sequence[RunPoint],
    front: Sequence[RunPoint],
    runs_details: dict[str, dict[str, Any]],
    out_dir: str | Path,
    *,
    title: str = "Pruning report",
    footprint_name: str = DEFAULT_FOOTPRINT,
    metric: str = DEFAULT_METRIC,
    budget_bytes: float | None = None,
    min_accuracy: float | None = None,
    missing: Sequence[tuple[str, str]] = (),
    filename: str = "report.html",
    aggregate: bool = False,
) -> Path:
    """Write ``out_dir/filename``; ``runs_details``: run id -> {"sparsity": {...}, "footprint": {...}};
    ``aggregate``: the points are averaged over seeds (tables show mean ± std, figures error bars)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017 - py3.10 target
    sections = [
        ("Answers", answers_section(points, front, budget_bytes, min_accuracy, missing)),
        ("Methods", method_summary_section(points, front)),
        ("Accuracy vs footprint (Pareto front per dataset)", fronts_section(points, footprint_name, metric)),
        ("Is pruning worth it?", worth_it_section(points, footprint_name, metric, aggregate)),
        ("Sparsity x precision", sparsity_precision_section(points, footprint_name)),
        ("Accuracy vs pruning ratio", ratio_section(points, metric)),
        ("Per-layer sparsity of the front's models", sparsity_section(front, runs_details)),
        ("Footprint breakdown of the front's models", breakdown_section(front, runs_details)),
        ("All runs", runs_table_section(points, front, footprint_name, metric, aggregate)),
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
    path = build_report(
        points,
        front,
        fetch_run_details(p.run_id for p in detail_models(front)),
        out,
        title=f"Pruning report: {', '.join(experiment_names)}",
        footprint_name=footprint,
        metric=chosen.query.metric,
        budget_bytes=chosen.budget_bytes,
        min_accuracy=chosen.min_accuracy,
        missing=missing,
        aggregate=chosen.aggregate == "seed",
    )
    run_id = None
    if log_run:
        with artifacts.stage_run("report", log_experiment or experiment_names[0], {"method": "report"}) as run:
            tracking.log_params({"precisions": ",".join(chosen.precisions), "aggregate": chosen.aggregate})
            tracking.log_metrics({"n_runs": len(points), "n_front": len(front), "n_missing": len(missing)})
            artifacts.log_artifact(path, "report")
            run_id = run.info.run_id
    return ReportResult(path, run_id, points, front, missing, chosen.precisions, chosen.aggregate)
