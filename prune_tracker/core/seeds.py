"""Seeds: the seed lists `main` and `sweep` take, a run's recipe identity without its seed, and the aggregation of
points that differ only by seed (`compare -P aggregate=seed`). Pure functions over plain dicts and
:class:`~prune_tracker.frontier.RunPoint` s: no MLflow here (the tracking layer computes each run's identity
with :func:`recipe_identity` while it reads the runs).

**Which runs are "the same but for the seed".** A run's identity is its stage, method, dataset, arch, pruning
kind and `baseline` tag, plus its parameters minus

* the seeds (:data:`SEED_PARAMS`),
* what says where or how it ran, not what it is (:data:`LOCAL_PARAMS`: device, data_dir, experiment, ...),
* the URI of the model it started from: a derived run (prune, finetune) takes its parent's identity instead
  (through the tag `parent_run_id`), so pruned runs of different seeds, each from its own base, match when their
  bases' train parameters match minus the seed ("same parent recipe"); a `runs:/<id>/...` URI in another
  parameter (`teacher_uri`) is replaced by that run's identity the same way,
* the requested `ratio` of a run pruned to `target_bytes` (each seed's search finds its own ratio; the target
  is the identity).

Values are compared in one spelling (numbers as floats, booleans in lower case), so "1" (logged by `mlflow run`)
and "1.0" (logged by the job) are the same value.

**Aggregation** (:func:`aggregate_points`): points with the same identity and precision become one point. ``n``
counts distinct seeds, not runs: a run's seeds are those along its lineage (``RunPoint.seeds``: the base's seed,
then its own), and runs with the same seeds are reruns of one sample. Reruns collapse into their mean first (one
value per seed), then the point's accuracy, footprint and every metric the members share are the mean over seeds,
with the sample standard deviation (ddof=1) beside them (``accuracy_std``, ``metric_std``); ``reruns`` says how
many runs were folded (tables print "n=2, 1 rerun"). A point alone stays a point with n=1 and no standard
deviation (``None``: one sample has none; the CSV leaves ``<metric>_std`` empty). The aggregated point is
represented by the member whose accuracy is closest to the mean (ties: the smaller run id): its run id is the one
tables name and `register` registers.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from .frontier import RunPoint, front_key

AGGREGATES = ("none", "seed")
SEED_PARAMS = frozenset({"seed", "finetune_seed"})  # finetune_seed: a prune run's seed in stores before split_seed
LOCAL_PARAMS = frozenset({
    "device", "amp_dtype", "data_source", "data_dir", "resume_run_id", "train_size", "val_images", "run_name",
    "experiment_name", "model_uri", "source_model_uri", "progress",
})
IDENTITY_TAGS = ("stage", "method", "dataset", "arch", "pruning_kind", "baseline")
RUN_URI = re.compile(r"^runs:/([0-9a-fA-F]+)(/.*)?$")


def parse_seeds(text: str | Iterable[int] | None) -> list[int]:
    """``"0,1,2"`` (or a sequence of ints) -> [0, 1, 2]: distinct integers >= 0 in the given order; ``""`` / None
    -> []. ValueError (one line) naming the value and what is allowed."""
    if text is None:
        return []
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else [str(s) for s in text]
    items = [s for s in items if s]
    seeds: list[int] = []
    for item in items:
        if not re.fullmatch(r"\d+", item):
            shown = text if isinstance(text, str) else ",".join(items)
            raise ValueError(f"seeds={shown!r} is not allowed: {item!r} is not an integer; expected comma-separated "
                             "integers >= 0, e.g. 0,1,2")
        if int(item) not in seeds:
            seeds.append(int(item))
    return seeds


def validate_aggregate(value: str | None) -> str:
    """``none`` (default for None / "") or ``seed``; ValueError naming the value and the allowed ones."""
    chosen = (value or "none").strip().lower()
    if chosen not in AGGREGATES:
        raise ValueError(f"aggregate={value!r} is not allowed; allowed: {', '.join(AGGREGATES)}")
    return chosen


def _has_target(params: Mapping[str, str]) -> bool:
    return str(params.get("target_bytes", "") or "").strip() not in ("", "0", "None")


def _canonical(text: str) -> str:
    """One spelling per value: `mlflow run` logs the raw "1" / "0.10" / "True" a job logs as "1.0" / "0.1" / "true"."""
    if text.lower() in ("true", "false"):
        return text.lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return repr(number) if math.isfinite(number) else text


def recipe_identity(
    params: Mapping[str, str],
    tags: Mapping[str, str],
    parent_identity: str | None = None,
    uri_identity: Callable[[str], str | None] | None = None,
) -> str:
    """A short hash of what a run is, minus its seed (rules: module docstring). ``parent_identity``: the identity
    of the run its model came from (None for a run trained from scratch); ``uri_identity``: the identity of the run
    a ``runs:/`` URI in a parameter names (None when unknown: the URI itself is kept)."""
    kept: dict[str, str] = {}
    for name, value in params.items():
        if name in SEED_PARAMS or name in LOCAL_PARAMS or (name == "ratio" and _has_target(params)):
            continue
        text = _canonical(str(value))
        found = RUN_URI.match(text)
        if found and uri_identity is not None:
            text = f"run[{uri_identity(found.group(1)) or found.group(1)}]{found.group(2) or ''}"
        kept[name] = text
    if parent_identity is None and params.get("model_uri"):
        kept["model_uri"] = str(params["model_uri"])  # a local file: no parent run to stand for it
    blob = {"tags": {t: str(tags.get(t, "")) for t in IDENTITY_TAGS}, "params": kept, "parent": parent_identity}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _common_mean(members: Sequence[RunPoint], attribute: str) -> dict[str, float]:
    dicts = [getattr(p, attribute) for p in members]
    shared = set(dicts[0]).intersection(*dicts[1:])
    return {k: statistics.fmean(float(d[k]) for d in dicts) for k in sorted(shared)}


def _common_std(members: Sequence[RunPoint]) -> dict[str, float]:
    if len(members) < 2:
        return {}
    shared = set(members[0].metrics).intersection(*(p.metrics for p in members[1:]))
    out = {}
    for k in sorted(shared):
        values = [float(p.metrics[k]) for p in members]
        if all(math.isfinite(v) for v in values):
            out[k] = statistics.stdev(values)
    return out


def _optional_mean(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else statistics.fmean(float(v) for v in values)


def run_seed(params: Mapping[str, str], tags: Mapping[str, str]) -> str:
    """A run's own seed: the resolved tag `seed`, else the param (a prune run logged before `split_seed` existed
    kept its seed in `finetune_seed`); "" when it has none."""
    for raw in (tags.get("seed"), params.get("finetune_seed"), params.get("seed")):
        if raw not in (None, ""):
            return _canonical(str(raw))
    return ""


def _per_seed(members: Sequence[RunPoint]) -> list[RunPoint]:
    """One point per distinct seed path: reruns of a seed become their mean (a lone run stays as it is)."""
    by_seed: dict[tuple[str, ...], list[RunPoint]] = {}
    for p in members:
        by_seed.setdefault(p.seeds or (f"run:{p.run_id}",), []).append(p)
    return [runs[0] if len(runs) == 1 else _mean_point(runs) for runs in by_seed.values()]


def _mean_point(members: Sequence[RunPoint]) -> RunPoint:
    """Means over `members` (each one sample), represented by the member closest to the mean accuracy."""
    accuracy = statistics.fmean(p.accuracy for p in members)
    representative = min(members, key=lambda p: (abs(p.accuracy - accuracy), p.run_id))
    return replace(
        representative,
        accuracy=accuracy,
        footprint=statistics.fmean(p.footprint for p in members),
        ratio=_optional_mean([p.ratio for p in members]),
        root_footprint=_optional_mean([p.root_footprint for p in members]),
        budget_epochs=_optional_mean([p.budget_epochs for p in members]),
        metrics=_common_mean(members, "metrics") if len(members) > 1 else dict(representative.metrics),
    )


def aggregate_group(members: Sequence[RunPoint]) -> RunPoint:
    """One point for runs that differ only by seed (same precision): means and standard deviations over distinct
    seeds, n = the number of distinct seeds, reruns of a seed averaged first (module docstring)."""
    samples = _per_seed(members)
    _, accuracy_std = mean_std([p.accuracy for p in samples])
    return replace(_mean_point(samples), metric_std=_common_std(samples), n=len(samples),
                   accuracy_std=accuracy_std, members=tuple(sorted(p.run_id for p in members)),
                   reruns=len(members) - len(samples))


def aggregate_points(points: Iterable[RunPoint]) -> list[RunPoint]:
    """Points that share identity (``group``), precision and dataset become one point each
    (:func:`aggregate_group`); a point without an identity stays alone. Sorted by ``front_key``."""
    groups: dict[tuple[str, str, str], list[RunPoint]] = {}
    for p in points:
        groups.setdefault((p.group or f"run:{p.run_id}", p.precision, p.dataset), []).append(p)
    return sorted((aggregate_group(g) for g in groups.values()), key=front_key)


def fmt_mean_std(mean: float | None, std: float | None, n: int, digits: int = 4, reruns: int = 0) -> str:
    """``0.8123 ± 0.0040 (n=3)``; a single run: ``0.8123 (n=1)``; reruns of a seed: ``(n=2, 1 rerun)``."""
    if mean is None:
        return "-"
    spread = "" if std is None else f" ± {std:.{digits}f}"
    rerun = "" if not reruns else f", {reruns} rerun{'s' if reruns > 1 else ''}"
    return f"{mean:.{digits}f}{spread} (n={n}{rerun})"

