"""Pure frontier logic over finished runs, seen as points (footprint, accuracy): no MLflow here.

* :class:`RunPoint` is one (run, precision); :func:`pareto_front` / :func:`grouped_front` are the
  non-dominated ones.
* :func:`best_under_budget` and :func:`smallest_above_floor` answer "best accuracy within a footprint budget"
  and "smallest footprint above an accuracy floor"; :func:`answer` asks both at once.

Precisions (:data:`PRECISIONS`): a run that logged its deployable variants is one point per precision p:

* y: ``<metric>_<p>`` (e.g. ``val_accuracy_int8``); for fp16 ``<metric>_fp16``, else ``<metric>`` (runs logged
  before precisions existed, whose fp32 accuracy stands for the fp16 model): :func:`accuracy_metric`.
* x: the fp16 point keeps the ``footprint`` option as it is (any of footprint_metrics(), e.g.
  ``footprint_best_bytes``, ``total_fp16_best_bytes``, ``flops_dense``); the other precisions take its
  counterpart in :data:`PRECISION_FOOTPRINTS` (:func:`precision_footprint`), e.g. ``footprint_best_bytes`` ->
  ``footprint_best_int8_bytes`` / ``footprint_best_int4_bytes`` (w8a8: its int8 weights,
  ``footprint_best_int8_bytes``), ``total_fp16_best_bytes`` -> ``total_w8a8_bytes`` for w8a8 only. A footprint
  without a counterpart gives that precision no point. Shortcuts: ``best`` = footprint_best_bytes (default),
  ``total`` = total_fp16_best_bytes (:data:`FOOTPRINT_SHORTCUTS`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

TEST_METRIC = "test_accuracy"
BASELINE_TAG = "baseline"  # tag of a baseline run; DENSE_SMALL: a smaller dense model at the pruned models' budget
DENSE_SMALL = "dense-small"
BASELINE_BASE_TAG = "baseline_base_run_id"  # the base model a baseline stands in for (its compression reference)
FP16 = "fp16"
PRECISIONS = (FP16, "int8", "int4", "w8a8")  # w8a8: int8 weights and int8 activations
FOOTPRINT_SHORTCUTS = {"best": "footprint_best_bytes", "total": "total_fp16_best_bytes"}
# fp16 footprint option -> {precision: the metric that precision's point takes as x}; fp16 keeps the option
PRECISION_FOOTPRINTS: dict[str, dict[str, str]] = {
    "footprint_best_bytes": {"int8": "footprint_best_int8_bytes", "int4": "footprint_best_int4_bytes",
                             "w8a8": "footprint_best_int8_bytes"},
    "footprint_fp16_bytes": {"int8": "footprint_int8_bytes", "int4": "footprint_int4_bytes",
                             "w8a8": "footprint_int8_bytes"},
    "footprint_csr_fp16_bytes": {"int8": "footprint_csr_int8_bytes", "int4": "footprint_csr_int4_bytes",
                                 "w8a8": "footprint_csr_int8_bytes"},
    "footprint_bitmask_fp16_bytes": {"int8": "footprint_bitmask_int8_bytes", "int4": "footprint_bitmask_int4_bytes",
                                     "w8a8": "footprint_bitmask_int8_bytes"},
    "total_fp16_best_bytes": {"w8a8": "total_w8a8_bytes"},
    "activation_peak_fp16_bytes": {"w8a8": "activation_peak_int8_bytes"},
}


# Names older stores hold for what is now one figure: the alias of the fp16 best-format bytes (dropped so that one
# name stands for one figure); compare still reads a store that holds only the old name.
LEGACY_FOOTPRINTS = {"footprint_best_fp16_bytes": "footprint_best_bytes"}
DENSE_FP32_WEIGHTS = "footprint_fp32_bytes"
DENSE_FP32_ACTIVATIONS = "activation_peak_fp32_bytes"


def resolve_footprint(footprint: str) -> str:
    """The footprint metric an option names: ``best`` / ``total`` shortcuts and legacy names expanded."""
    footprint = FOOTPRINT_SHORTCUTS.get(footprint, footprint)
    return LEGACY_FOOTPRINTS.get(footprint, footprint)


def dense_reference(root_metrics: Mapping[str, float], footprint: str) -> float | None:
    """What "x smaller" divides, from the unpruned root's metrics: one meaning everywhere (compare, report, the
    registry's tags, the benchmarks). Weight bytes (any format, any precision) against the root's dense fp32
    weights; a total (weights + activations) against dense fp32 weights + the fp32 activation peak; an activation
    peak against the fp32 peak; a non-byte footprint (FLOPs, MicroNet score) against the root's own value of it.
    So a dense fp16 model is 2.00x smaller and its int8 file about 4x. None when the root lacks the metric."""
    footprint = resolve_footprint(footprint)
    if not footprint.endswith("_bytes"):
        return root_metrics.get(footprint)
    if footprint.startswith("activation_peak_"):
        names = [DENSE_FP32_ACTIVATIONS]
    elif footprint.startswith("total_"):
        names = [DENSE_FP32_WEIGHTS, DENSE_FP32_ACTIVATIONS]
    else:
        names = [DENSE_FP32_WEIGHTS]
    values = [root_metrics.get(name) for name in names]
    return None if any(v is None for v in values) else float(sum(values))


def precision_footprint(footprint: str, precision: str) -> str | None:
    """The x metric of a ``precision`` point under the (fp16) ``footprint`` option; None when it has none."""
    footprint = resolve_footprint(footprint)
    if precision == FP16:
        return footprint
    return PRECISION_FOOTPRINTS.get(footprint, {}).get(precision)


def footprint_precisions(footprint: str) -> tuple[str, ...]:
    """The precisions that have a point under ``footprint``, in :data:`PRECISIONS` order."""
    return tuple(p for p in PRECISIONS if precision_footprint(footprint, p) is not None)


def accuracy_metric(metric: str, precision: str, metrics: Mapping[str, float] | None = None) -> str:
    """``<metric>_<precision>``; for fp16 that name when ``metrics`` holds it (or is not given), else ``metric``."""
    name = f"{metric}_{precision}"
    if precision == FP16 and metrics is not None and name not in metrics:
        return metric
    return name


def precision_rank(precision: str) -> int:
    return PRECISIONS.index(precision) if precision in PRECISIONS else len(PRECISIONS)


def parse_precisions(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """``"fp16,int8"`` or ``["int8", "w8a8"]`` -> distinct precisions in :data:`PRECISIONS` order; None or empty
    -> None (every precision found). ValueError naming the first unknown value and the allowed ones."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(item).strip().lower() for item in items if str(item).strip()]
    for name in names:
        if name not in PRECISIONS:
            raise ValueError(f"unknown precision {name!r}; allowed: {', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p in names) or None


@dataclass(frozen=True)
class RunPoint:
    """A finished run at one ``precision`` as a point (footprint, accuracy); ``root_*``: its unpruned
    (stage=train) ancestor and the dense fp32 reference of its footprint (:func:`dense_reference`), the same for
    every precision (so the compression of a quantised point counts quantisation too). Identity on a front:
    :attr:`key` = (run_id, precision)."""

    run_id: str
    experiment: str
    method: str
    ratio: float | None
    stage: str
    dataset: str
    arch: str
    accuracy: float
    footprint: float
    parent_run_id: str | None = None
    root_run_id: str | None = None
    root_footprint: float | None = None
    tags: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    metrics: dict[str, float] = field(default_factory=dict, compare=False, repr=False)
    precision: str = FP16
    # Seeds (prune_tracker.seeds): `group` is the run's identity minus its seed; an aggregated point has the means
    # as accuracy / footprint / metrics, `n` members, the sample standard deviations (None for n=1) and the members'
    # run ids (its run_id: the member closest to the mean accuracy).
    group: str | None = field(default=None, compare=False, repr=False)
    n: int = 1
    accuracy_std: float | None = None
    metric_std: dict[str, float] = field(default_factory=dict, compare=False, repr=False)
    members: tuple[str, ...] = field(default=(), compare=False, repr=False)
    # The seeds along the run's lineage (root's first, its own last): distinct seeds are distinct samples; runs with
    # the same seeds are reruns (`reruns`: how many an aggregated point folded into its per-seed means).
    seeds: tuple[str, ...] = field(default=(), compare=False, repr=False)
    reruns: int = 0
    # Training epochs spent along the lineage (base epochs + every prune / fine-tune retraining); the identity of
    # the unpruned root (a dense-small baseline's root is the base it stands in for): `root_group`.
    budget_epochs: float | None = None
    root_group: str | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        """(run_id, precision): a run is one point per precision."""
        return (self.run_id, self.precision)

    @property
    def compression(self) -> float | None:
        """How many times smaller than the dense fp32 root (:func:`dense_reference`); None when unknown."""
        if not self.root_footprint or self.footprint <= 0:
            return None
        return self.root_footprint / self.footprint

    @property
    def is_unpruned(self) -> bool:
        """A dense model trained from scratch, not a dense-small baseline (those: :attr:`is_baseline`)."""
        return self.stage == "train" and not self.is_baseline

    @property
    def is_baseline(self) -> bool:
        """A dense-small baseline: a smaller dense model trained with the pruned models' budget (tag `baseline`)."""
        return self.tags.get(BASELINE_TAG) == DENSE_SMALL

    @property
    def test_accuracy_std(self) -> float | None:
        """The standard deviation of the test accuracy over an aggregated point's seeds (None for n=1)."""
        return self.metric_std.get(accuracy_metric(TEST_METRIC, self.precision, self.metrics))

    @property
    def test_accuracy(self) -> float | None:
        """The test accuracy at this precision (``test_accuracy_<p>``; fp16 falls back to ``test_accuracy``),
        reported beside the (validation) accuracy it is ranked by."""
        return self.metrics.get(accuracy_metric(TEST_METRIC, self.precision, self.metrics))


def front_key(p: RunPoint) -> tuple[float, float, str, int]:
    """Sort order of tables and fronts: footprint ascending, accuracy descending, run id, precision."""
    return (p.footprint, -p.accuracy, p.run_id, precision_rank(p.precision))


def fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:g}"


def fmt_compression(p: RunPoint) -> str:
    return "-" if p.compression is None else f"{p.compression:.2f}x"


def pareto_front(points: Iterable[RunPoint]) -> list[RunPoint]:
    """Non-dominated points, sorted by :func:`front_key`.

    ``q`` dominates ``p`` when ``q.footprint <= p.footprint`` and ``q.accuracy >= p.accuracy`` with at least
    one of the two strict. So exact duplicates (same footprint and accuracy) are all kept, a point with the
    same accuracy at a larger footprint is dropped, and so is one with lower accuracy at the same footprint.
    O(n log n): one sort, then a sweep keeping the best accuracy seen at strictly smaller footprints.
    """
    ordered = sorted(points, key=front_key)
    front: list[RunPoint] = []
    best_smaller = -math.inf  # best accuracy among strictly smaller footprints
    i = 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j].footprint == ordered[i].footprint:
            j += 1
        group_best = ordered[i].accuracy  # the group is sorted by accuracy descending
        if group_best > best_smaller:
            front.extend(p for p in ordered[i:j] if p.accuracy == group_best)
            best_smaller = group_best
        i = j
    return front


def group_points(points: Iterable[RunPoint], *keys: str) -> dict[tuple[str, ...], list[RunPoint]]:
    """Points by the values of their ``keys`` attributes, groups sorted by those values."""
    groups: dict[tuple[str, ...], list[RunPoint]] = {}
    for p in points:
        groups.setdefault(tuple(getattr(p, k) for k in keys), []).append(p)
    return dict(sorted(groups.items()))


def grouped_front(points: Sequence[RunPoint]) -> list[RunPoint]:
    """The union of the Pareto fronts of each (dataset, arch): fronts never mix datasets."""
    front = [p for pts in group_points(points, "dataset", "arch").values() for p in pareto_front(pts)]
    return sorted(front, key=lambda p: (p.dataset, p.arch, *front_key(p)))


def check_one_dataset(points: Iterable[RunPoint]) -> None:
    """ValueError when the points hold several datasets: their accuracies share no front."""
    datasets = sorted({p.dataset for p in points})
    if len(datasets) > 1:
        raise ValueError(
            f"the runs found hold {len(datasets)} datasets ({', '.join(datasets)}); accuracies on different "
            "datasets share no front: choose one with dataset=<name>"
        )


def best_under_budget(points: Iterable[RunPoint], budget_bytes: float) -> RunPoint | None:
    """Most accurate point with ``footprint <= budget_bytes``, across precisions; ties: smaller footprint, then
    smaller run id, then precision in :data:`PRECISIONS` order. None when nothing fits.
    """
    fits = [p for p in points if p.footprint <= budget_bytes]
    return min(fits, key=lambda p: (-p.accuracy, p.footprint, p.run_id, precision_rank(p.precision)), default=None)


def smallest_above_floor(points: Iterable[RunPoint], min_accuracy: float) -> RunPoint | None:
    """Smallest-footprint point with ``accuracy >= min_accuracy``, across precisions; ties: higher accuracy,
    then run id, then precision.

    None when nothing reaches the floor.
    """
    fits = [p for p in points if p.accuracy >= min_accuracy]
    return min(fits, key=front_key, default=None)


@dataclass(frozen=True)
class Answers:
    """The two questions a lab asks of its runs; a winner is None when its question was not asked or
    nothing qualifies."""

    budget_bytes: float | None = None
    min_accuracy: float | None = None
    best_under_budget: RunPoint | None = None
    smallest_above_floor: RunPoint | None = None

    @property
    def champion(self) -> RunPoint | None:
        """The model to promote: the budget winner, else the floor winner."""
        return self.best_under_budget or self.smallest_above_floor

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "best_under_budget": point_summary(self.best_under_budget),
            "min_accuracy": self.min_accuracy,
            "smallest_above_floor": point_summary(self.smallest_above_floor),
        }


def answer(points: Sequence[RunPoint], budget_bytes: float | None, min_accuracy: float | None) -> Answers:
    """Ask each question that has a value: ``budget_bytes`` and/or ``min_accuracy``."""
    return Answers(
        budget_bytes,
        min_accuracy,
        best_under_budget(points, budget_bytes) if budget_bytes is not None else None,
        smallest_above_floor(points, min_accuracy) if min_accuracy is not None else None,
    )


def point_summary(p: RunPoint | None) -> dict[str, Any] | None:
    """A point's fields and compression, without its tag and metric dictionaries (JSON-ready)."""
    if p is None:
        return None
    summary = asdict(p)
    for name in ("tags", "metrics", "metric_std", "group", "root_group", "n", "accuracy_std", "members",
                 "budget_epochs", "seeds", "reruns"):
        del summary[name]
    extra: dict[str, Any] = {}
    if p.members:  # averaged over seeds
        extra |= {"n": p.n, "reruns": p.reruns, "accuracy_std": p.accuracy_std,
                  f"{TEST_METRIC}_std": p.test_accuracy_std, "members": list(p.members)}
    if p.budget_epochs is not None:
        extra["budget_epochs"] = p.budget_epochs
    if p.is_baseline:
        extra[BASELINE_TAG] = DENSE_SMALL
    return summary | {"compression": p.compression, TEST_METRIC: p.test_accuracy} | extra
