"""The footprint breakdown section: parameters vs activations per format and precision of the front's models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from prune_tracker.analysis.report.html import (
    detail_models,
    escape,
    figure_to_img,
    html_table,
    point_label,
)
from prune_tracker.core.footprint import FORMATS, human_bytes
from prune_tracker.core.frontier import (
    RunPoint,
)

ACTIVATION_METRICS = (
    ("activations fp32", "activation_peak_fp32_bytes"),
    ("activations fp16", "activation_peak_fp16_bytes"),
    ("activations int8", "activation_peak_int8_bytes"),
)


QUANTISED_METRICS = (  # parameter bytes of the quantised variants (best of dense / CSR / bitmask per weight)
    ("params best int8", "footprint_best_int8_bytes"),
    ("params best int4", "footprint_best_int4_bytes"),
)


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
    labels = [f"{p.dataset}\n{point_label(p, chr(10))}" for p in models]
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
            escape(r.get("name", "?")),
            escape(r.get("shape", "")),
            escape(r.get("numel", "")),
            escape(r.get("nonzeros", "")),
            *(_row_bytes(r, f) for f in formats),
            escape(r.get("format", r.get("chosen", ""))),
        ]
        for r in _tensor_rows(doc)
    ]
    if not rows:
        return '<p class="note">footprint.json has no per-tensor rows.</p>'
    return html_table(["tensor", "shape", "numel", "nonzeros", *formats, "chosen"], rows, left=2)


def breakdown_section(front: Sequence[RunPoint], details: dict[str, dict[str, Any]]) -> str:
    fig = breakdown_figure(front)
    parts = (
        [figure_to_img(fig, "footprint breakdown")] if fig else ['<p class="note">No footprint metrics.</p>']
    )
    for p in detail_models(front):
        doc = (details.get(p.run_id) or {}).get("footprint")
        if doc:
            title = (f"{escape(p.dataset)}/{escape(p.arch)} {escape(point_label(p))} ({escape(p.stage)}) &mdash; "
                     "per-tensor footprint")
            parts.append(
                f"<details><summary>{title} <code>{escape(p.run_id)}</code></summary>{tensor_table(doc)}"
                "</details>"
            )
    return "\n".join(parts)
