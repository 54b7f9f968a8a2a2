"""What a job that starts from a logged model reads from its lineage: the model, the split it inherits, the parent's
train schedule (learning-rate rewinding), the distillation teacher, and the tags it carries on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune_tracker import tracking
from prune_tracker.core.data import DataSplits
from prune_tracker.core.recipes import finetune_recipe
from prune_tracker.core.training import TrainConfig
from prune_tracker.jobs.any_cnn import check_model_on_data, copy_loaded, resolve_input_shape
from prune_tracker.jobs.specs import INHERITED_FIELDS, DataSpec, Recovery

# Params read up the lineage: the split, where the data was, and `seed` (a split seed for runs logged before
# `split_seed` existed).
LINEAGE_PARAMS = (*INHERITED_FIELDS, "seed", "data_dir")


@dataclass
class Loaded:
    """A logged model with the data it is evaluated on: `data` is the resolved split (every field set)."""

    model: tracking.LoadedModel
    data: DataSpec
    splits: DataSplits


def origin(loaded: tracking.LoadedModel) -> str:
    """A short name of where a model came from, for run names: its run's short id, else the file's name."""
    return tracking.short_id(loaded.source_run_id) or Path(loaded.uri).name


def load_with_data(model_uri: str, data: DataSpec, arch: str | None = None,
                   input_shape: tuple[int, ...] | None = None) -> Loaded:
    """The model behind `model_uri`, the split completed from its lineage, and the data it must be evaluated on
    (same class count, and a forward pass on its images works); `input_shape` is resolved (declared, else the
    option, else the dataset's)."""
    loaded = tracking.load_model(model_uri, arch)
    parent_params = tracking.lineage_params(loaded.source_run_id, LINEAGE_PARAMS) if loaded.source_run_id else {}
    data = data.inherit(parent_params)
    splits = data.load(num_classes=loaded.spec["num_classes"])
    if int(loaded.spec["num_classes"]) != splits.num_classes:
        raise ValueError(f"the model has {loaded.spec['num_classes']} classes but dataset {splits.dataset!r} has "
                         f"{splits.num_classes}; pass the dataset it was trained on")
    declared = loaded.input_shape or input_shape  # what the model is said to expect, if anything
    loaded.input_shape = resolve_input_shape(loaded, splits, input_shape)
    check_model_on_data(loaded.model, splits, model_uri, declared)
    return Loaded(loaded, data, splits)


def check_trainable(loaded: tracking.LoadedModel) -> None:
    """Only an fp32 model can be pruned or trained: a deployable file has BatchNorm folded, weights quantised."""
    if loaded.precision != "fp32":
        source = f"runs:/{loaded.source_run_id}/model" if loaded.source_run_id else "the fp32 model"
        raise ValueError(f"{loaded.uri!r} is a deployable {loaded.precision} file (BatchNorm folded, weights "
                         f"quantised): prune or fine-tune {source} instead")


def inherited_method(loaded: tracking.LoadedModel) -> dict[str, str]:
    """The parent run's method, pruning kind and applied ratio (tags), carried by runs derived from it."""
    if loaded.source_run_id is None:
        return {}
    tags = tracking.run_tags(loaded.source_run_id)
    return {k: tags[k] for k in ("method", "pruning_kind", "ratio") if k in tags}


def recipe_config(config: TrainConfig, recovery: Recovery, loaded: tracking.LoadedModel) -> TrainConfig:
    """The fine-tuning config of `recovery`'s schedule (rewind: the parent train run's own schedule)."""
    parent_params = None
    if recovery.finetune_schedule == "rewind":
        train_run = tracking.ancestor_run(loaded.source_run_id, "train") if loaded.source_run_id else None
        if train_run is None:
            raise ValueError(f"finetune_schedule=rewind needs the train run of {loaded.uri!r} (its lr, schedule, "
                             "epochs, warmup_fraction) and the store has none; use finetune_schedule=cosine")
        parent_params = tracking.run_params(train_run)
    return finetune_recipe(config, recovery.finetune_schedule, parent_params, recovery.rewind_fraction,
                           recovery.distill_alpha, recovery.distill_temperature)


def _num_classes(model: nn.Module, splits: DataSplits) -> int:
    with torch.no_grad():
        return int(model.cpu().eval()(torch.zeros(1, *splits.test.images.shape[1:])).shape[1])


def teacher(recovery: Recovery, loaded: tracking.LoadedModel, splits: DataSplits, device: torch.device
            ) -> nn.Module | None:
    """The distillation teacher: `teacher_uri`'s model, or the unpruned model being pruned; None when off."""
    if recovery.distill_alpha == 0:
        return None
    model = tracking.load_model(recovery.teacher_uri).model if recovery.teacher_uri else copy_loaded(loaded)
    if _num_classes(model, splits) != splits.num_classes:
        raise ValueError(f"teacher_uri={recovery.teacher_uri!r} predicts another number of classes than "
                         f"dataset {splits.dataset!r} has ({splits.num_classes})")
    return model.to(device).eval()


def seed_params(data: DataSpec, config: TrainConfig) -> dict[str, Any]:
    """The two seeds every run logs (params) and carries resolved (tags, since `mlflow run` logs the raw "" of an
    inherited value as the param first): `seed` (training / pruning / fine-tuning) and `split_seed`."""
    return {"seed": config.seed, "split_seed": data.split_seed}
