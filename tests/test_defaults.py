"""Defaults are declared in three places (MLproject, click options, config dataclasses): they must agree, and
every MLproject parameter must reach its command."""

from __future__ import annotations

import math
import re
from dataclasses import fields

import pytest
import yaml
from conftest import PROJECT_ROOT

from prune_tracker.cli import cli
from prune_tracker.core.seeds import parse_seeds
from prune_tracker.core.training import TrainConfig
from prune_tracker.studies.pipeline import PipelineConfig

MLPROJECT = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]


def click_defaults(command_name: str) -> dict[str, object]:
    """Default per option name as MLflow passes it (`--key value`): the dest name and every long spelling."""
    defaults = {}
    for param in cli.commands[command_name].params:
        for name in (param.name, *(o.lstrip("-").replace("-", "_") for o in param.opts if o.startswith("--"))):
            defaults[name] = param.default
    return defaults


def same(mlproject_value: object, click_value: object) -> bool:
    if click_value is None or click_value == "":
        return mlproject_value in ("", None)
    if isinstance(click_value, bool):
        return str(mlproject_value).lower() == str(click_value).lower()
    if isinstance(click_value, int | float):
        try:
            return math.isclose(float(mlproject_value), float(click_value))
        except (TypeError, ValueError):
            return False
    return str(mlproject_value) == str(click_value)


@pytest.mark.parametrize("entry", sorted(MLPROJECT))
def test_mlproject_defaults_equal_the_cli_defaults(entry):
    defaults = click_defaults(entry)
    for name, spec in MLPROJECT[entry]["parameters"].items():
        assert name in defaults, f"{entry}: MLproject parameter {name} is not a CLI option"
        if "default" in spec:
            assert same(spec["default"], defaults[name]), (
                f"{entry}.{name}: MLproject {spec['default']!r} != CLI {defaults[name]!r}")


@pytest.mark.parametrize("entry", sorted(MLPROJECT))
def test_every_mlproject_parameter_reaches_the_command(entry):
    placeholders = set(re.findall(r"\{(\w+)\}", MLPROJECT[entry]["command"]))
    assert placeholders == set(MLPROJECT[entry]["parameters"])


def test_train_cli_defaults_equal_the_train_config():
    defaults, config = click_defaults("train"), TrainConfig()
    for f in fields(TrainConfig):
        if f.name in defaults:
            assert same(defaults[f.name], getattr(config, f.name)), f.name


def test_main_cli_defaults_equal_the_pipeline_config():
    defaults, config = click_defaults("main"), PipelineConfig()
    assert defaults["methods"] == ",".join(config.methods)
    assert [float(r) for r in defaults["ratios"].split(",")] == config.ratios
    for name in ("arch", "finetune_epochs", "finetune_lr", "footprint", "budget", "register"):
        assert same(defaults[name], getattr(config, name)), name
    for name in ("epochs", "lr", "ema_decay", "resize_schedule", "batch_size"):
        assert same(defaults[name], getattr(config.train, name)), name
    for name in ("train_subset", "val_size", "dataset"):
        assert same(defaults[name], getattr(config.data, name)), name
    assert parse_seeds(defaults["seeds"]) == config.seeds and same(defaults["baselines"], config.baselines)


def test_sweep_and_search_cli_defaults_equal_their_configs():
    from prune_tracker.studies.search import DEFAULT_METHODS, SearchConfig
    from prune_tracker.studies.sweep import PruneBase, SweepConfig

    sweep, config = click_defaults("sweep"), SweepConfig(PruneBase("x"))
    assert sweep["methods"] == ",".join(config.methods) and parse_seeds(sweep["seeds"]) == config.seeds
    assert [float(r) for r in sweep["ratios"].split(",")] == config.ratios and not sweep["target_bytes"]
    search, searching = click_defaults("search"), SearchConfig(PruneBase("x"), "100KB")
    assert search["methods"] == ",".join(DEFAULT_METHODS) and search["trials"] == searching.trials
    for name in ("executor", "cpus_per_trial"):
        assert same(sweep[name], getattr(config, name)) and same(search[name], getattr(searching, name)), name
    assert same(sweep["baselines"], config.baselines)
    assert same(search["footprint"], searching.footprint) and same(search["sampler_seed"], searching.seed)


def test_a_studys_recipe_defaults_equal_the_prune_cli_defaults():
    """A sweep or search trial left alone prunes exactly as `prune-tracker prune` does by default."""
    from dataclasses import asdict

    from prune_tracker.studies.sweep import RECIPE_OPTIONS, Recipe

    prune, recipe = click_defaults("prune"), Recipe()
    values = {**asdict(recipe.train), **asdict(recipe.recovery), "finetune_epochs": recipe.finetune_epochs,
              "target_metric": recipe.target_metric, "qat": recipe.qat, "arch": recipe.arch}
    for name in RECIPE_OPTIONS:
        assert name in prune, f"{name} is not a prune option"
        assert same(prune[name], values[name]), f"{name}: prune {prune[name]!r} != study recipe {values[name]!r}"


def _spec_values(spec) -> dict[str, object]:
    """A job spec's values by option name: its own fields, and those of its data, run, train and recovery parts."""
    from dataclasses import asdict, is_dataclass

    values: dict[str, object] = {}
    for f in fields(spec):
        value = getattr(spec, f.name)
        if is_dataclass(value):
            values |= asdict(value)
        else:
            values[f.name] = value
    values["precisions"] = ",".join(values["precisions"])
    return values


@pytest.mark.parametrize("command,build", [
    ("train", lambda specs: specs.TrainSpec()),
    ("prune", lambda specs: specs.PruneSpec("runs:/x/model")),
    ("finetune", lambda specs: specs.FinetuneSpec("runs:/x/model")),
    ("evaluate", lambda specs: specs.EvaluateSpec("runs:/x/model")),
])
def test_job_spec_defaults_equal_the_cli_defaults(command, build):
    """A spec built with only what is required runs the job exactly as the command does with its defaults (the
    benchmarks and studies build specs; users type commands)."""
    from prune_tracker.jobs import specs

    defaults, values = click_defaults(command), _spec_values(build(specs))
    checked = [name for name in values if name in defaults and name not in ("input_shape", "arch", "model_uri")]
    assert {"seed", "split_seed", "precisions", "device", "experiment_name"} & set(checked)
    for name in checked:
        spec_value = values[name]
        if command in ("prune", "finetune") and name == "epochs":
            continue  # prune's budget is finetune_epochs; finetune's epochs is the TrainConfig's (checked below)
        if command == "finetune" and name == "finetune_schedule":  # '' on the command line: --schedule's
            assert spec_value == defaults["schedule"]
            continue
        assert same(defaults[name], spec_value) or (defaults[name] in ("", None) and spec_value in ("", None)), (
            f"{command}.{name}: CLI {defaults[name]!r} != spec {spec_value!r}")
    if command == "finetune":
        assert same(defaults["epochs"], values["epochs"])
