"""Per-layer sensitivity scan and ratio allocation (Li et al. 2017 Sec. 3.2, Fig. 2).

Scan: prune each scope layer alone at several ratios (lowest-L1 filters) and measure validation accuracy.
Removing a channel is emulated exactly by zeroing the consumer's input kernels for it (the consumer then
never reads the channel, as after physical removal), which avoids rebuilding a graph per point.

Allocation: instead of Li's hand-picked per-stage ratios and skipped layers, pick one accuracy-drop budget
tau for all layers: each layer gets the largest ratio whose (interpolated, monotonised) drop stays <= tau,
with tau found by bisection so that the parameter-weighted mean ratio is the target (the same parameter
count as a uniform ratio). Sensitive layers so prune least, insensitive ones most; integer rounding is
then fixed by moving single channels to the least sensitive layers (or away from the most sensitive).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .channels import ChannelLayer, lowest, n_remove


def _consumer_slice(layer: ChannelLayer, channel_idxs: list[int]) -> tuple[Tensor, list[int]]:
    """The consumer weight and the input indices that read `channel_idxs` (Linear: flattened C x H x W)."""
    weight = layer.consumer.weight
    if isinstance(layer.consumer, nn.Conv2d):
        return weight, channel_idxs
    spatial = layer.consumer.in_features // layer.conv.out_channels
    return weight, [c * spatial + s for c in channel_idxs for s in range(spatial)]


@torch.no_grad()
def accuracy_without(
    model: nn.Module, layer: ChannelLayer, channel_idxs: list[int], evaluate: Callable[[nn.Module], float]
) -> float:
    weight, cols = _consumer_slice(layer, channel_idxs)
    saved = weight[:, cols].clone()
    weight[:, cols] = 0
    try:
        return float(evaluate(model))
    finally:
        weight[:, cols] = saved


def sensitivity_scan(
    model: nn.Module,
    layers: list[ChannelLayer],
    ratios: tuple[float, ...],
    scores: dict[str, Tensor],
    evaluate: Callable[[nn.Module], float],
    log: Callable[[str], None] = print,
) -> tuple[float, dict[str, dict[float, float]]]:
    """(baseline accuracy, layer -> {ratio: accuracy with that layer alone pruned})."""
    base = float(evaluate(model))
    table: dict[str, dict[float, float]] = {}
    for layer in layers:
        c = layer.conv.out_channels
        table[layer.name] = {
            r: accuracy_without(model, layer, lowest(scores[layer.name], n_remove(c, r)), evaluate)
            for r in ratios
        }
        points = ", ".join(f"{r:.2f}->{a:.3f}" for r, a in table[layer.name].items())
        log(f"sensitivity {layer.name}: {points}")
    return base, table


def _ratio_at(drops: np.ndarray, grid: np.ndarray, tau: float) -> float:
    """Largest ratio on the piecewise-linear (monotone) drop curve with drop <= tau."""
    if drops[-1] <= tau:
        return float(grid[-1])
    j = int(np.argmax(drops > tau))  # first grid point over budget (j >= 1 since drops[0] = 0 <= tau)
    d0, d1, r0, r1 = drops[j - 1], drops[j], grid[j - 1], grid[j]
    return float(r0 + (r1 - r0) * (tau - d0) / (d1 - d0)) if d1 > d0 else float(r0)


def allocate(base: float, table: dict[str, dict[float, float]], channels: dict[str, int], target: float,
             costs: dict[str, float] | None = None) -> dict[str, float]:
    """Per-layer removal ratios whose mean, weighted by each layer's parameters (channels x `costs`, the
    parameters one channel carries; default 1 = channel-weighted), equals `target`; the most sensitive
    layers are pruned least. With parameter costs, the result removes as many parameters as a uniform
    ratio `target` would (exactly on block-internal ResNet scopes)."""
    names = list(table)
    costs = costs or {n: 1.0 for n in names}
    grid = np.array([0.0, *sorted(next(iter(table.values())))])
    if target > grid[-1]:
        raise ValueError(f"target channel ratio {target} exceeds the largest scanned ratio {grid[-1]}; "
                         "add larger sensitivity_ratios")
    curves = {n: np.maximum.accumulate(np.clip([0.0] + [base - table[n][r] for r in grid[1:]], 0, None))
              for n in names}
    weights = np.array([channels[n] * costs[n] for n in names], dtype=float)

    def mean_ratio(tau: float) -> float:
        return float(np.dot(weights, [_ratio_at(curves[n], grid, tau) for n in names]) / weights.sum())

    lo, hi = 0.0, max(float(c[-1]) for c in curves.values()) + 1e-9
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_ratio(mid) < target else (lo, mid)
    counts = {n: n_remove(channels[n], _ratio_at(curves[n], grid, hi)) for n in names}
    _fix_rounding(counts, curves, channels, costs, target, float(grid[-1]))
    return {n: counts[n] / channels[n] for n in names}


def _fix_rounding(counts: dict[str, int], curves: dict[str, np.ndarray], channels: dict[str, int],
                  costs: dict[str, float], target: float, cap: float) -> None:
    """Move single channels (least sensitive layers gain first, most sensitive lose first) while that
    brings the removed parameter total closer to target * total."""
    want = target * sum(channels[n] * costs[n] for n in counts)
    by_sensitivity = sorted(counts, key=lambda n: float(curves[n].mean()))  # least sensitive first
    while True:
        diff = want - sum(counts[n] * costs[n] for n in counts)
        step = 1 if diff > 0 else -1
        order = by_sensitivity if step > 0 else by_sensitivity[::-1]
        for n in order:
            new = counts[n] + step
            if costs[n] < 2 * abs(diff) and 0 <= new <= min(n_remove(channels[n], cap), channels[n] - 1):
                counts[n] = new
                break
        else:
            return


def sensitivity_figure(base: float, table: dict[str, dict[float, float]], chosen: dict[str, float]):
    """Accuracy vs ratio per layer (Li et al. Fig. 2 style), chosen ratios marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for name, row in table.items():
        rs = [0.0, *row]
        (line,) = ax.plot(rs, [base, *row.values()], marker=".", linewidth=1, label=name)
        ax.axvline(chosen[name], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("fraction of filters removed (this layer alone)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Filter-pruning sensitivity (lowest L1 first)")
    if len(table) <= 30:
        ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    return fig
