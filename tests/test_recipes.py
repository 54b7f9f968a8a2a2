"""Recovery recipes: the fine-tuning TrainConfig for a schedule, from the parent run's params."""

from __future__ import annotations

import math

import pytest

from prune_tracker.core.recipes import finetune_recipe, parent_schedule_params
from prune_tracker.core.training import ParentSchedule, TrainConfig, rewind_lr

# What MLflow hands back for a parent trained with TrainConfig(lr=0.2, epochs=30, schedule="onecycle"): strings.
PARENT_RUN = {"lr": "0.2", "schedule": "onecycle", "epochs": "30", "warmup_fraction": "0.25", "batch_size": "128"}


def test_rewind_recipe_reads_the_parent_run() -> None:
    base = TrainConfig(lr=0.01, epochs=5, schedule="cosine")
    recipe = finetune_recipe(base, "rewind", PARENT_RUN, rewind_fraction=0.5, distill_alpha=0.3)
    assert (recipe.schedule, recipe.rewind_fraction, recipe.distill_alpha) == ("rewind", 0.5, 0.3)
    assert (recipe.parent_lr, recipe.parent_schedule, recipe.parent_epochs, recipe.parent_warmup_fraction) == \
        (0.2, "onecycle", 30.0, 0.25)
    assert recipe.lr == base.lr and recipe.epochs == base.epochs  # the rest of the fine-tune recipe is kept
    # 10 steps per epoch: the parent ran 300 steps; from half-way, 50 fine-tune steps replay steps 150..299
    parent = ParentSchedule.from_config(recipe, steps_per_epoch=10)
    assert parent.total_steps == 300 and parent.lr == 0.2
    assert rewind_lr(0, 50, parent, 0.5) == pytest.approx(parent.lr_at(150))
    assert rewind_lr(49, 50, parent, 0.5) == pytest.approx(parent.lr_at(299))
    assert rewind_lr(0, 50, parent, None) == pytest.approx(parent.lr_at(250))  # its last 5 of 30 epochs
    cosine = ParentSchedule(0.2, "cosine", 300)
    assert rewind_lr(0, 150, cosine, 0.5) == pytest.approx(0.1)  # half-way down a cosine
    assert rewind_lr(149, 150, cosine, 0.5) == pytest.approx(0.1 * (1 + math.cos(math.pi * 299 / 300)))


def test_parent_params_from_a_train_config() -> None:
    from dataclasses import asdict

    params = asdict(TrainConfig(lr=0.1, schedule="cosine", epochs=12.5, warmup_fraction=0.0))  # numbers, not strings
    assert parent_schedule_params(params) == {"parent_lr": 0.1, "parent_schedule": "cosine", "parent_epochs": 12.5,
                                              "parent_warmup_fraction": 0.0}


def test_other_schedules_need_no_parent() -> None:
    assert finetune_recipe(TrainConfig(), "constant").schedule == "constant"
    assert finetune_recipe(TrainConfig(), distill_alpha=1.0, distill_temperature=2.0).distill_temperature == 2.0


@pytest.mark.parametrize("schedule, params, message", [
    ("linear", None, "finetune_schedule='linear' must be one of: cosine, rewind, constant"),
    ("rewind", None, "finetune_schedule='rewind' needs the parent run's params"),
    ("rewind", {"lr": "0.2", "schedule": "cosine"}, "missing: epochs, warmup_fraction"),
    ("rewind", {**PARENT_RUN, "schedule": "rewind"}, "parent run's schedule='rewind' cannot be rewound to"),
    ("rewind", {**PARENT_RUN, "lr": "fast"}, "must be numbers"),
    ("rewind", {**PARENT_RUN, "lr": "0"}, "parent_lr=0.0 must be a finite number > 0"),
])
def test_bad_recipes(schedule, params, message) -> None:
    with pytest.raises(ValueError, match=message):
        finetune_recipe(TrainConfig(), schedule, params)


def test_bad_distillation_in_a_recipe() -> None:
    with pytest.raises(ValueError, match=r"distill_alpha=2 must be in \[0, 1\]"):
        finetune_recipe(TrainConfig(), distill_alpha=2)


def test_a_train_runs_logged_params_give_back_its_recipe():
    from dataclasses import asdict

    from prune_tracker.core.recipes import logged_train_config

    recipe = TrainConfig(epochs=0.5, batch_size=64, lr=0.1, resize_schedule="16:0.3,24:0.4", nesterov=False,
                         rewind_fraction=0.25, width=0.5, seed=3)
    assert logged_train_config({k: str(v) for k, v in asdict(recipe).items()}) == recipe  # MLflow params: strings
    assert logged_train_config({"epochs": "19.0"}) == TrainConfig(epochs=19.0)  # the rest: defaults
