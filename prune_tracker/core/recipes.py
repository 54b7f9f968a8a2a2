"""Recovery recipes for a pruned model: the fine-tuning TrainConfig for a schedule (cosine, constant, or
learning-rate rewinding to the parent's own schedule) and knowledge distillation from the unpruned parent.

Learning-rate rewinding (Renda et al. 2020) needs the schedule the parent was trained with; the train job logs
it as the run params `lr`, `schedule`, `epochs` and `warmup_fraction` (`asdict(TrainConfig)`), which
`parent_schedule_params` reads back (MLflow returns params as strings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from .training import FINETUNE_SCHEDULES, SCHEDULES, TrainConfig

PARENT_PARAMS = ("lr", "schedule", "epochs", "warmup_fraction")  # what rewinding reads from the parent's run


def parent_schedule_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """TrainConfig fields `parent_lr`, `parent_schedule`, `parent_epochs`, `parent_warmup_fraction` from the
    params of the run that trained the parent (strings or numbers). ValueError naming what is missing or wrong."""
    missing = [k for k in PARENT_PARAMS if params.get(k) in (None, "")]
    if missing:
        raise ValueError(f"learning-rate rewinding needs the parent run's params {', '.join(PARENT_PARAMS)}; "
                         f"missing: {', '.join(missing)}")
    schedule = str(params["schedule"])
    if schedule not in SCHEDULES:
        raise ValueError(f"the parent run's schedule={schedule!r} cannot be rewound to; it must be one of: "
                         f"{', '.join(SCHEDULES)} (rewind to the run that trained it from scratch)")
    try:
        values = {k: float(params[k]) for k in ("lr", "epochs", "warmup_fraction")}
    except (TypeError, ValueError):
        raise ValueError(f"the parent run's lr / epochs / warmup_fraction must be numbers, got "
                         f"{[params[k] for k in ('lr', 'epochs', 'warmup_fraction')]}") from None
    return {
        "parent_lr": values["lr"],
        "parent_schedule": schedule,
        "parent_epochs": values["epochs"],
        "parent_warmup_fraction": values["warmup_fraction"],
    }


def finetune_recipe(
    config: TrainConfig,
    schedule: str = "cosine",
    parent_params: Mapping[str, Any] | None = None,
    rewind_fraction: float | None = None,
    distill_alpha: float = 0.0,
    distill_temperature: float = 4.0,
) -> TrainConfig:
    """`config` set up for fine-tuning a pruned model (validated):
    - schedule `cosine` (the fine-tune default) or `constant`: from `config.lr`;
    - `rewind`: the parent's schedule (from `parent_params`, its run's params; see `parent_schedule_params`)
      replayed from `rewind_fraction` of its length (None: its last `config.epochs` epochs, Renda et al. 2020),
      see `training.rewind_step`; `config.lr` is then unused.
    `distill_alpha` > 0 turns on distillation; the Trainer / finetune_fn must then be given the teacher."""
    # `onecycle` stays possible for `finetune --schedule onecycle`; prune / main offer FINETUNE_SCHEDULES
    if schedule not in FINETUNE_SCHEDULES and schedule not in SCHEDULES:
        raise ValueError(f"finetune_schedule={schedule!r} must be one of: {', '.join(FINETUNE_SCHEDULES)}")
    fields: dict[str, Any] = {"schedule": schedule, "distill_alpha": distill_alpha,
                              "distill_temperature": distill_temperature}
    if schedule == "rewind":
        if parent_params is None:
            raise ValueError("finetune_schedule='rewind' needs the parent run's params (lr, schedule, epochs, "
                             "warmup_fraction)")
        fields.update(parent_schedule_params(parent_params), rewind_fraction=rewind_fraction)
    recipe = replace(config, **fields)
    recipe.validate()
    return recipe


def logged_train_config(params: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig a train run logged (`asdict(TrainConfig)` as MLflow params, i.e. strings): each field
    converted to its annotated type; fields the run did not log keep their defaults."""
    values: dict[str, Any] = {}
    for spec in fields(TrainConfig):
        raw, kind = params.get(spec.name), str(spec.type)  # annotations are strings (postponed evaluation)
        if raw in (None, "", "None"):
            continue
        if kind == "bool":
            values[spec.name] = str(raw).lower() == "true"
        elif kind == "int":
            values[spec.name] = int(float(raw))
        elif kind.startswith("float"):
            values[spec.name] = float(raw)
        else:
            values[spec.name] = str(raw)
    return TrainConfig(**values)
