"""HTML pieces of the report: inline CSS, escaping, tables, figures as base64 PNG, point labels."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from typing import Any

from matplotlib.figure import Figure

from prune_tracker.analysis.compare import fmt_accuracy, point_method
from prune_tracker.core.frontier import RunPoint, fmt_ratio, group_points
from prune_tracker.core.seeds import fmt_mean_std

MAX_TABLE_ROWS = 300


MAX_DETAIL_MODELS = 12
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


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def figure_to_img(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def html_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1, classes: Sequence[str] = ()
) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{escape(h)}</th>' for i, h in enumerate(header))
    body = []
    for n, row in enumerate(rows):
        cls = f' class="{classes[n]}"' if n < len(classes) and classes[n] else ""
        cells = "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def point_label(p: RunPoint, sep: str = " ") -> str:
    if p.is_baseline:
        return point_method(p)
    return "unpruned" if p.is_unpruned else f"{p.method}{sep}r={fmt_ratio(p.ratio)}"


def accuracy_cell(p: RunPoint, aggregate: bool, test: bool = False) -> str:
    """The (test) accuracy of a row: ``mean ± std (n=k)`` for points averaged over seeds."""
    if not aggregate:
        return fmt_accuracy(p.test_accuracy if test else p.accuracy)
    if test:
        return fmt_mean_std(p.test_accuracy, p.test_accuracy_std, p.n, reruns=p.reruns)
    return fmt_mean_std(p.accuracy, p.accuracy_std, p.n, reruns=p.reruns)


def label_with_precision(p: RunPoint) -> str:
    return f"{point_label(p)} {p.precision}"


def decimals(step: float) -> int:
    text = f"{step:g}"
    return len(text.split(".")[1]) if "." in text else 0


def group_by(items: Iterable[Any], key) -> dict[Any, list[Any]]:
    out: dict[Any, list[Any]] = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return out


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
