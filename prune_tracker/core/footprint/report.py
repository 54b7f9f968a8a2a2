"""Human views of a Footprint: `format_table` (text, human units) and `footprint_figure` (Agg figure)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .formats import FORMATS, StorageFormat
from .units import human_bytes

if TYPE_CHECKING:
    from .core import Footprint



def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _cell(row: dict[str, Any], fmt: StorageFormat) -> str:
    size = human_bytes(row[fmt.name])
    return f"{size} ({row[fmt.row_layout_field]})" if fmt.is_choice else size


def _tensor_lines(rows: list[dict[str, Any]], m: dict[str, float]) -> list[str]:
    formats = list(FORMATS.values())
    header = ["tensor", "shape", "nonzero", *(f.label for f in formats)]
    body = [
        [r["name"], "x".join(map(str, r["shape"])) or "scalar", f"{r['nonzeros']}/{r['numel']}",
         *(_cell(r, f) for f in formats)]
        for r in rows
    ]
    total = ["total", "", f"{m['params_nonzero']:.0f}/{m['params_total']:.0f} params"]
    return _grid(header, [*body, total + [human_bytes(m[f.metric]) for f in formats]])


def _activation_lines(act: dict[str, Any]) -> list[str]:
    rows = [
        [
            "<input>",
            "input",
            "x".join(map(str, [act["batch_size"], *act["input_shape"]])),
            human_bytes(act["input_fp32_bytes"]),
            human_bytes(act["input_fp32_bytes"] // 2),
            human_bytes(act["input_fp32_bytes"]),
        ]
    ]
    rows += [
        [
            r["module"] or "<model>",
            r["op"],
            "x".join(map(str, r["shape"])),
            human_bytes(r["fp32_bytes"]),
            human_bytes(r["fp16_bytes"]),
            human_bytes(r["live_fp32_bytes"]),
        ]
        for r in act["rows"]
    ]
    return _grid(["module", "op", "output", "fp32", "fp16", "live fp32"], rows)


def _summary_lines(fp: Footprint) -> list[str]:
    m, act, mn = fp.metrics, fp.breakdown["activations"], fp.breakdown["micronet"]
    files = fp.breakdown["files"]
    lines = [
        f"Activation peak (batch {act['batch_size']}): {human_bytes(m['activation_peak_fp32_bytes'])} fp32, "
        f"{human_bytes(m['activation_peak_fp16_bytes'])} fp16, at {act['peak_at']['module']} "
        f"({act['peak_at'].get('op', 'input')})",
        f"Total fp16 best (params + activation peak): {human_bytes(m['total_fp16_best_bytes'])}",
        f"Compute per image (MACs): dense {m['flops_dense'] / 1e6:.2f}M, "
        f"effective {m['flops_effective'] / 1e6:.2f}M",
        f"MicroNet (fp16, BN folded): score {m['micronet_score']:.5f} = params "
        f"{m['micronet_params'] / 1e6:.4f}M / 36.5M + ops {m['micronet_ops'] / 1e6:.2f}M / 10.49B "
        f"(mults {mn['mults'] / 1e6:.2f}M, adds {mn['adds'] / 1e6:.2f}M)",
        "Files: " + ", ".join(f"{k} {human_bytes(v['file_bytes'])}" for k, v in files.items()),
    ]
    lines += [f"{name}: {m[name]:+.1%}" for name in sorted(m) if name.endswith("_reduction")]
    return lines


def format_table(fp: Footprint) -> str:
    """The breakdown as text: per-tensor storage, per-op activations, then the summary."""
    sections = [
        ["Parameters"],
        _tensor_lines(fp.breakdown["tensors"], fp.metrics),
        ["", "Activations (new feature maps per op; live = all feature maps alive after the op)"],
        _activation_lines(fp.breakdown["activations"]),
        [""],
        _summary_lines(fp),
    ]
    return "\n".join(line for section in sections for line in section)


def footprint_figure(fp: Footprint) -> Figure:
    """Stacked bars, one per storage format: parameters below, activation peak on top."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = [f.label for f in FORMATS.values()]
    params = [fp.metrics[f.metric] for f in FORMATS.values()]
    acts = [fp.metrics[f.codec.activation_metric] for f in FORMATS.values()]
    ax.bar(labels, params, label="parameters")
    ax.bar(
        labels,
        acts,
        bottom=params,
        label=f"activation peak (batch {fp.breakdown['activations']['batch_size']})",
    )
    for i, (p, a) in enumerate(zip(params, acts, strict=True)):
        ax.annotate(human_bytes(p + a), (i, p + a), ha="center", va="bottom", fontsize=8)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
    ax.set_ylabel("bytes")
    ax.set_title("Memory footprint by storage format")
    ax.legend()
    return fig
