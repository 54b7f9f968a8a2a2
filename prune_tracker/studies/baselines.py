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
from dataclasses import replace

from prune_tracker.core.dense_small import DEFAULT_TARGET_METRIC, DenseSmall, size_dense_small
from prune_tracker.core.frontier import DENSE_SMALL
from prune_tracker.core.training import TrainConfig
from prune_tracker.jobs import DataSpec, RunSpec, TrainSpec, train


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
    target_bytes: float,
    epochs: float,
    data: DataSpec,
    config: TrainConfig,
    run: RunSpec,
    *,
    archs: Sequence[str] = ("resnet20",),
    target_metric: str = DEFAULT_TARGET_METRIC,
    num_classes: int | None = None,
    base_run_id: str | None = None,
    sized: DenseSmall | None = None,
) -> tuple[str, DenseSmall]:
    """Size (:func:`size_dense_small`, unless `sized` is given) and train a dense-small baseline with `config`'s
    recipe for `epochs` (the pruned model's total budget: base epochs + fine-tuning epochs); returns the train
    run id and the chosen model. `num_classes` defaults to the dataset's; `base_run_id`: the base model it stands
    in for (its compression reference in compare)."""
    if num_classes is None:
        num_classes = data.load().num_classes
    sized = sized or size_dense_small(target_bytes, target_metric, archs, num_classes)
    tags = {**run.extra_tags, **sized.tags(epochs, base_run_id)}
    name = run.run_name or f"{DENSE_SMALL} {sized.arch} w{sized.width:g} {epochs:g}ep"
    run = replace(run, extra_tags=tags, run_name=name)
    return train(TrainSpec(sized.arch, data, replace(config, epochs=epochs, width=sized.width), run)), sized
