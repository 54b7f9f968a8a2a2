"""The studies' commands: `main` (the whole pipeline), `sweep` (a grid of prune trials) and `search` (Optuna within a
footprint budget). Each builds its study's config from the same option groups and specs as the lab commands."""

from __future__ import annotations

from typing import Any

import click

from prune_tracker.cli.lab import prune
from prune_tracker.cli.options import (
    FiniteFloat,
    Seeds,
    bool_option,
    data_options,
    data_spec,
    handle_errors,
    model_uri_option,
    option,
    parse_extra_options,
    recovery_options,
    recovery_spec,
    run_spec,
    seed_option,
    split_list,
    stack,
    train_config,
    train_options,
    trust_pickle_option,
    zero_init_option,
)


@click.command(name="main")
@option("arch", default="resnet20")
@option("methods", default="lamp,global_l1", help="comma-separated pruning methods")
@option("ratios", default="0.75", help="comma-separated pruning ratios")
@option("finetune_epochs", type=FiniteFloat(low=0), default=1.0)
@option("finetune_lr", type=FiniteFloat(low=0), default=0.01)
@option("footprint", default="footprint_best_bytes")
@option("budget", default="1/8",
        help="footprint budget for the champion: bytes (200KB) or a fraction of the base's fp32 bytes (1/8)")
@bool_option("register", default=True, help="register the front's models; --register [true|false]")
@option("registered_name", default="")
@option("seeds", type=Seeds(), default="", help="run the whole study once per seed, e.g. 0,1,2, and compare the mean "
        "over seeds (default: the one --seed); the split stays --split-seed")
@bool_option("baselines", default=False,
             help="also train a dense-small baseline per pruned model: at most its bytes, the same total epochs")
@train_options(epochs_default=5, lr_default=0.2, resize_default="16:0.5,24:0.3")
@recovery_options()
@zero_init_option
@seed_option("training, pruning and fine-tuning")
@data_options(train_subset_default=0, val_size_default=2000)
@trust_pickle_option
@handle_errors
def main_pipeline(**kw: Any) -> None:
    """The whole study: train, prune with each method at each ratio, fine-tune, (dense-small baselines,) evaluate,
    compare, register, report — each step a nested run, once per seed; finished steps are reused on a rerun."""
    from prune_tracker.studies.pipeline import PipelineConfig, run_pipeline

    study = {name: kw.pop(name) for name in ("arch", "finetune_epochs", "finetune_lr", "footprint", "register",
                                             "seeds", "baselines")}
    methods, ratios, budget, registered_name = (kw.pop(k) for k in ("methods", "ratios", "budget", "registered_name"))
    recovery, data, run = recovery_spec(kw), data_spec(kw), run_spec(kw)
    config = train_config(kw)
    try:
        ratio_values = [float(r) for r in split_list(ratios)]
    except ValueError:
        raise ValueError(f"ratios={ratios!r} must be comma-separated numbers in [0, 1)") from None
    pipeline = PipelineConfig(**study, data=data, train=config, methods=split_list(methods), ratios=ratio_values,
                              tta_flip=config.tta_flip, budget=budget or None, registered_name=registered_name or None,
                              experiment_name=run.experiment_name, device=run.device, progress=run.progress,
                              precisions=run.precisions, recovery=recovery)
    result = run_pipeline(pipeline)
    click.echo(f"pipeline run {result.run_id} finished: {len(result.steps)} steps ({len(result.reused)} reused)")
    if result.champion_uri:
        click.echo(f"champion: {result.champion_uri}")


def _recipe_param(name: str) -> click.Parameter | None:
    """The `prune` option spelled `name` (underscores or dashes) when it is a recipe option a study may vary."""
    from prune_tracker.studies.sweep import RECIPE_OPTIONS

    spelling = {f"--{name}", f"--{name.replace('_', '-')}"}
    return next((p for p in prune.params if p.name in RECIPE_OPTIONS and (p.name == name or spelling & set(p.opts))),
                None)


def study_options(args: list[str], option_pairs: tuple[str, ...]) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """Extra `--name value` pairs (MLflow's undeclared `-P name=value`) and `--option name=value`: prune's recipe
    options, each value checked by prune's own option type (a comma list: several values), and method options as
    given (the study splits and checks them per method)."""
    from prune_tracker.studies.sweep import UNSPLIT_OPTIONS, split_values

    raw, methods_only = parse_extra_options(args), parse_extra_options([], option_pairs)
    recipe, options = {}, dict(methods_only)
    for name, value in raw.items():
        param = _recipe_param(name)
        if param is None:
            options[name] = value
            continue
        values = [value] if param.name in UNSPLIT_OPTIONS else split_values(value)
        recipe[param.name] = [param.type.convert(v, param, None) for v in values]
    return recipe, options


def executor_options(fn):
    from prune_tracker.studies.sweep import EXECUTORS

    return stack(
        option("executor", type=click.Choice(EXECUTORS), default="local",
               help="local: trials one after another here; ray: Ray tasks"),
        option("ray_address", default="", help="executor=ray: auto (the running cluster) or ray://host:port; "
                                                "empty: a local ray.init(num_cpus=ray_num_cpus)"),
        option("ray_num_cpus", type=click.IntRange(min=0), default=0, help="CPUs of a local Ray (0: every core)"),
        option("cpus_per_trial", type=click.IntRange(min=1), default=1,
               help="CPUs reserved for each trial and its torch threads"),
        click.option("--option", "option_pairs", multiple=True, help="method option name=value (repeatable)"),
    )(fn)


def _executor_options(kw: dict[str, Any]) -> dict[str, Any]:
    """The executor options (popped), as the study configs name them."""
    return {"executor": kw.pop("executor"), "ray_address": kw.pop("ray_address") or None,
            "ray_num_cpus": kw.pop("ray_num_cpus") or None, "cpus_per_trial": kw.pop("cpus_per_trial")}


def _prune_base(model_uri: str, kw: dict[str, Any]):
    from prune_tracker.studies.sweep import PruneBase

    data, run = data_spec(kw), run_spec(kw)
    return PruneBase(model_uri, data, precisions=run.precisions, device=run.device,
                     experiment_name=run.experiment_name), run


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@model_uri_option
@option("methods", default="lamp,global_l1", help="comma-separated pruning methods")
@option("ratios", default="0.5,0.75", help="comma-separated pruning ratios")
@option("target_bytes", default="", help="comma-separated footprint targets (e.g. 100KB,200KB) instead of ratios: "
                                         "each trial searches the ratio reaching one")
@option("seeds", default="0", help="comma-separated pruning / fine-tuning seeds (the split stays the base run's)")
@bool_option("baselines", default=False,
             help="also train a dense-small baseline per finished trial: at most its bytes, the same total epochs")
@executor_options
@data_options(inherit=True)
@click.pass_context
@trust_pickle_option
@handle_errors
def sweep(ctx: click.Context, **kw: Any) -> None:
    """Prune one base model with methods x ratios (or target_bytes) x seeds x recipe options (extra `--name a,b`:
    prune's recipe options and method options), each trial a prune run nested under a stage=sweep run; finished
    trials are reused, a failed one is retried once; ends with compare over the trials."""
    from prune_tracker.studies.sweep import SweepConfig, parse_ratios, parse_seed_list, parse_target_bytes, run_sweep

    recipe_axes, option_axes = study_options(list(ctx.args), kw.pop("option_pairs"))
    grid = {name: kw.pop(name) for name in ("methods", "ratios", "target_bytes", "seeds", "baselines")}
    executor = _executor_options(kw)
    base, run = _prune_base(kw.pop("model_uri"), kw)
    config = SweepConfig(base, split_list(grid["methods"]), parse_ratios(grid["ratios"]),
                         parse_target_bytes(grid["target_bytes"]), parse_seed_list(grid["seeds"]), recipe_axes,
                         option_axes, **executor, run_name=run.run_name, baselines=grid["baselines"], log=click.echo)
    result = run_sweep(config)
    reused = sum(t.reused for t in result.trials)
    click.echo(f"sweep run {result.run_id} finished: {len(result.finished)} trials ({reused} reused)")


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@model_uri_option
@option("budget", required=True, help="footprint budget: 100KB, 1.5MB, 120000 (bytes) or 1/8 of the base's fp32 bytes")
@option("trials", type=click.IntRange(min=1), default=20, help="Optuna trials (prune runs)")
@option("methods", default="lamp,global_l1,li_filters", help="comma-separated pruning methods to choose from")
@option("footprint", default="footprint_best_bytes", help="footprint metric family the budget applies to")
@option("sampler_seed", type=click.IntRange(min=0), default=0, help="seed of the TPE sampler and of every trial")
@option("registered_name", default="", help="registry name of the champion (default prune-tracker-<dataset>-<arch>)")
@executor_options
@data_options(inherit=True)
@click.pass_context
@trust_pickle_option
@handle_errors
def search(ctx: click.Context, **kw: Any) -> None:
    """Optuna search for the most accurate model (validation) within a footprint budget: chooses the method, the
    precision fitted to the budget (hence the ratio) and the recipe options (extra `--name a,b` are choices);
    registers the winner as champion. Each trial is a prune run nested under a stage=search run."""
    from prune_tracker.studies.search import SearchConfig, run_search

    recipe_space, option_space = study_options(list(ctx.args), kw.pop("option_pairs"))
    asked = {name: kw.pop(name) for name in ("budget", "trials", "methods", "footprint", "sampler_seed",
                                             "registered_name")}
    executor = _executor_options(kw)
    base, run = _prune_base(kw.pop("model_uri"), kw)
    result = run_search(SearchConfig(base, asked["budget"], asked["trials"], split_list(asked["methods"]),
                                     recipe_space, option_space, asked["footprint"], asked["sampler_seed"],
                                     **executor, registered_name=asked["registered_name"] or None,
                                     run_name=run.run_name, log=click.echo))
    test = "-" if result.test_accuracy is None else f"{result.test_accuracy:.4f}"
    click.echo(f"champion: {result.champion_uri} (version {result.champion_version}; run {result.champion_run_id}, "
               f"{result.method}, {result.champion_precision}, {result.champion_bytes:.0f} B; val_accuracy "
               f"{result.val_accuracy:.4f}, test_accuracy {test} reported, not used to select)")
    click.echo(f"search run {result.run_id} finished")


COMMANDS = (main_pipeline, sweep, search)
