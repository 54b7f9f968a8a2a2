"""Dense-small baselines: "does the pruned model beat a smaller dense model of the same size, trained with the same
budget?" (Blalock et al. 2020; Liu et al. 2019).

* sizing (`core.dense_small.size_dense_small`): the widest dense model at most the pruned model's bytes;
* :func:`dense_small_baseline` sizes and trains it (a `stage=train` run tagged `baseline=dense-small`, with
  `baseline_target_bytes`, `baseline_target_metric`, `baseline_base_run_id` when the base is known,
  `budget_epochs` and `width`) with the recipe it is given and `epochs` = the pruned model's total budget
  (base epochs + fine-tuning epochs): equal training budget.

`main -P baselines=true` and `sweep -P baselines=true` call these for each pruned model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from prune_tracker.core.dense_small import DenseSmall, size_dense_small
from prune_tracker.core.frontier import DENSE_SMALL
from prune_tracker.core.models import width_archs
from prune_tracker.core.training import TrainConfig
from prune_tracker.jobs import DataSpec, RunSpec, TrainSpec, train


def check_baseline_base(model_uri: str, base_run_id: str | None) -> None:
    """Dense-small baselines are sized by the base run's architecture (which must take a width multiplier) and
    trained with its recipe and split: ValueError (one line) before any trial runs when the base has neither."""
    from prune_tracker import tracking

    if base_run_id is None:
        raise ValueError(f"baselines=true trains dense-small models with the base run's recipe and split, and "
                         f"model_uri={model_uri!r} is a file without a run; log it first (prune-tracker train) or "
                         "set baselines=false")
    arch = tracking.run_params(base_run_id).get("arch", "")
    if arch not in width_archs():
        raise ValueError(f"baselines=true needs a base whose arch takes a width multiplier ({', '.join(width_archs())})"
                         f"; {model_uri!r} is arch {arch or 'unknown'!r}: set baselines=false")


def baseline_identity(sized: DenseSmall, epochs: float, data: DataSpec, config: TrainConfig,
                      precisions: Sequence[str], base_run_id: str | None) -> dict[str, Any]:
    """Every parameter that decides a dense-small baseline's run (`main`'s baseline steps and the sweep's hash it
    into their `reuse_key`, so either reuses the other's)."""
    return {"arch": sized.arch, **data.logged(), **asdict(replace(config, epochs=epochs, width=sized.width)),
            "precisions": list(precisions), "baseline": DENSE_SMALL, "base_run_id": base_run_id or ""}


def size_for_pruned_run(run_id: str, metrics: Mapping[str, float], base_epochs: float, finetune_epochs: float,
                        target_metric: str, arch: str, num_classes: int) -> tuple[float, DenseSmall]:
    """The baseline of one pruned run: its total budget (base epochs + fine-tuning epochs + the method's own
    retraining, `method_finetune_epochs`) and the `arch` model at most its `target_metric` bytes. ValueError (one
    line) when the run logged no such metric or nothing fits."""
    if target_metric not in metrics:
        raise ValueError(f"prune run {run_id} logged no {target_metric} to size a dense-small baseline by")
    epochs = base_epochs + finetune_epochs + metrics.get("method_finetune_epochs", 0.0)
    return epochs, size_dense_small(metrics[target_metric], target_metric, [arch], num_classes)


def dense_small_baseline(
    sized: DenseSmall,
    epochs: float,
    data: DataSpec,
    config: TrainConfig,
    run: RunSpec,
    base_run_id: str | None = None,
) -> tuple[str, DenseSmall]:
    """Train the dense-small baseline `sized` (:func:`size_dense_small` chose it) with `config`'s recipe for
    `epochs` (the pruned model's total budget: base epochs + fine-tuning epochs); returns the train run id and the
    model. `base_run_id`: the base model it stands in for (its compression reference in compare)."""
    tags = {**run.extra_tags, **sized.tags(epochs, base_run_id)}
    name = run.run_name or f"{DENSE_SMALL} {sized.arch} w{sized.width:g} {epochs:g}ep"
    run = replace(run, extra_tags=tags, run_name=name)
    return train(TrainSpec(sized.arch, data, replace(config, epochs=epochs, width=sized.width), run)), sized
