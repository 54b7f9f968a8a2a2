""""Is pruning worth it?": each pruned model beside the dense-small baseline of its bytes and budget."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from prune_tracker.analysis.compare import point_method
from prune_tracker.analysis.report.html import (
    MAX_TABLE_ROWS,
    accuracy_cell,
    escape,
    figure_to_img,
    group_by,
    html_table,
    point_label,
)
from prune_tracker.core.footprint import human_bytes
from prune_tracker.core.frontier import (
    RunPoint,
    precision_rank,
)


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
    rows = [[escape(pr.pruned.precision), escape(point_label(pr.pruned)), human_bytes(pr.pruned.footprint),
             escape(accuracy_cell(pr.pruned, aggregate)), _budget(pr.pruned),
             escape(point_method(pr.baseline)) if pr.baseline else "-",
             human_bytes(pr.baseline.footprint) if pr.baseline else "-",
             escape(accuracy_cell(pr.baseline, aggregate)) if pr.baseline else "-", _budget(pr.baseline),
             f"{100 * pr.delta:+.2f}" if pr.delta is not None else "-", escape(pr.verdict)]
            for pr in pairs[:MAX_TABLE_ROWS]]
    imgs = []
    for (dataset, precision), group in sorted(
            group_by(pairs, lambda pr: (pr.pruned.dataset, pr.pruned.precision)).items(),
            key=lambda kv: (kv[0][0], precision_rank(kv[0][1]))):
        roots = {pr.pruned.root_group for pr in group}
        dense = [b for b in points if b.is_baseline and b.precision == precision and b.dataset == dataset
                 and b.root_group in roots]
        imgs.append(figure_to_img(worth_it_figure(group, dense, metric, f"{dataset}: pruned vs dense-small "
                                                  f"({precision})"), f"worth it {dataset} {precision}"))
    seeds = "mean ± sample std over seeds (n)" if aggregate else "single runs (compare with aggregate=seed for seeds)"
    note = (f'<p class="note">Each pruned model against the largest dense-small baseline of the same base recipe and '
            f"precision with at most its bytes ({escape(footprint_name)} or its precision's counterpart), both trained "
            f"from scratch for the epochs shown (pruned: base + every retraining); {seeds}. Δ = pruned − "
            "dense-small; a verdict needs |Δ| beyond two standard errors of the difference.</p>")
    return note + html_table(header, rows, left=2) + "\n".join(imgs)
