"""Dense-small sizing: the architecture and `width` whose dense model is at most a byte target in a footprint
metric — the "smaller dense model of the same size" a pruned model must beat (Blalock et al. 2020; Liu et al. 2019).

:func:`size_dense_small` measures, not estimates: each candidate model is built and measured by the same code as a
prune job's byte target (`core.flows.target_measure`). Widths are searched on the grid k / 64 (k = 1 .. 256, so
1/64 .. 4); bytes never shrink as the width grows, so a bisection finds the largest width that fits. Among several
candidate architectures, the one whose fitted model is largest (closest to the target) wins; ties go to the first
listed. Training it is the studies' part (`studies/baselines.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from .flows import target_measure
from .frontier import BASELINE_BASE_TAG, BASELINE_TAG, DENSE_SMALL
from .models import build_model, width_archs

WIDTH_GRID = 64  # widths are k / WIDTH_GRID
MAX_WIDTH_STEPS = 4 * WIDTH_GRID  # up to width 4
DEFAULT_TARGET_METRIC = "footprint_best_bytes"


@dataclass(frozen=True)
class DenseSmall:
    """The dense model chosen for a byte target: `arch` at `width`, measuring `bytes` <= `target_bytes` in
    `target_metric`."""

    arch: str
    width: float
    bytes: float
    target_bytes: float
    target_metric: str

    def tags(self, budget_epochs: float, base_run_id: str | None = None) -> dict[str, str]:
        """The lineage tags of its training run."""
        tags = {BASELINE_TAG: DENSE_SMALL, "baseline_target_bytes": f"{self.target_bytes:.0f}",
                "baseline_target_metric": self.target_metric, "budget_epochs": f"{budget_epochs:g}",
                "width": f"{self.width:g}"}
        return tags | ({BASELINE_BASE_TAG: base_run_id} if base_run_id else {})


def _largest_fitting_step(measure: Callable[[int], float], target: float) -> tuple[int, float] | None:
    """The largest k in 1..MAX_WIDTH_STEPS with measure(k) <= target (measure is non-decreasing in k), with its
    measured bytes; None when even k = 1 does not fit."""
    smallest = measure(1)
    if smallest > target:
        return None
    largest = measure(MAX_WIDTH_STEPS)
    if largest <= target:
        return MAX_WIDTH_STEPS, largest
    low, low_bytes, high = 1, smallest, MAX_WIDTH_STEPS  # measure(low) fits, measure(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        value = measure(middle)
        if value <= target:
            low, low_bytes = middle, value
        else:
            high = middle
    return low, low_bytes


def size_dense_small(
    target_bytes: float,
    target_metric: str = DEFAULT_TARGET_METRIC,
    archs: Sequence[str] = ("resnet20",),
    num_classes: int = 10,
) -> DenseSmall:
    """The architecture (of `archs`) and width whose dense model is at most `target_bytes` in `target_metric`, the
    largest that fits (rules: module docstring). ValueError (one line) when an arch takes no width or nothing fits."""
    if not archs:
        raise ValueError("archs is empty: name at least one architecture for the dense-small baseline")
    unsupported = [a for a in archs if a not in width_archs()]
    if unsupported:
        build_model(unsupported[0], num_classes)  # an unknown arch: its own error listing the known ones
        raise ValueError(f"arch {unsupported[0]!r} has no width multiplier; dense-small baselines take: "
                         f"{', '.join(width_archs())}")
    measure_model = target_measure(target_metric)
    measure_model(build_model(archs[0], num_classes))  # an unknown metric fails at once, naming the known ones
    best: DenseSmall | None = None
    smallest: dict[str, float] = {}
    for arch in archs:

        def measure(k: int, arch: str = arch) -> float:
            return float(measure_model(_dense(arch, num_classes, k / WIDTH_GRID)))

        found = _largest_fitting_step(measure, target_bytes)
        if found is None:
            smallest[arch] = measure(1)
            continue
        candidate = DenseSmall(arch, found[0] / WIDTH_GRID, found[1], float(target_bytes), target_metric)
        if best is None or candidate.bytes > best.bytes:
            best = candidate
    if best is None:
        arch, size = min(smallest.items(), key=lambda kv: kv[1])
        raise ValueError(f"no dense model fits target {target_bytes:.0f} bytes in {target_metric}: the smallest, "
                         f"{arch} at width 1/{WIDTH_GRID}, is {size:.0f} bytes")
    return best


def _dense(arch: str, num_classes: int, width: float) -> nn.Module:
    return build_model(arch, num_classes, width=width).eval()
