"""The lab's commands: train, evaluate, prune, finetune (each builds its job spec and calls the job), and the
read-only ones: footprint, methods, archs, compare, report."""

from __future__ import annotations

import json
from typing import Any

import click

from prune_tracker.cli.options import (
    Bytes,
    FiniteFloat,
    Width,
    arch_option,
    bool_option,
    data_options,
    data_spec,
    handle_errors,
    input_shape_option,
    model_uri_option,
    option,
    parse_extra_options,
    print_run,
    qat_option,
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
from prune_tracker.core.seeds import AGGREGATES


@click.command()
@option("arch", default="resnet20", help="see `prune-tracker archs`")
@option("resume_run_id", default="", help="continue that run's last checkpoint")
@option("width", type=Width(), default=1.0,
        help="channel multiplier of the zoo's ResNets and VGGs (round(width x channels), at least 1); 1 = published")
@train_options(epochs_default=30, lr_default=0.2)
@zero_init_option
@option("bn_sparsity", type=FiniteFloat(low=0), default=0.0,
        help="network slimming: L1 penalty on BatchNorm scales (e.g. 1e-5), for bn_scale pruning; 0 = off")
@seed_option("training (initialisation, data order, augmentation)")
@data_options()
@handle_errors
def train(arch: str, resume_run_id: str, **kw: Any) -> None:
    """Train a CIFAR model and log it as an MLflow run (stage=train)."""
    from prune_tracker.jobs import TrainSpec
    from prune_tracker.jobs import train as train_job

    data, run = data_spec(kw), run_spec(kw)
    spec = TrainSpec(arch, data, train_config(kw), run, resume_run_id or None)
    print_run("train", train_job(spec))


@click.command()
@model_uri_option
@arch_option
@input_shape_option
@click.option("--tta-flip/--no-tta-flip", "--tta_flip/--no_tta_flip", "tta_flip", default=True, show_default=True)
@option("batch_size", type=click.IntRange(min=1), default=500)
@data_options(inherit=True)
@trust_pickle_option
@handle_errors
def evaluate(model_uri: str, arch: str, input_shape: str, tta_flip: bool, batch_size: int, **kw: Any) -> None:
    """Evaluate a model: top-1/top-5, loss, per-class accuracy, confusion matrix, CPU latency."""
    from prune_tracker.jobs import EvaluateSpec, evaluate_model

    spec = EvaluateSpec(model_uri, data_spec(kw), run_spec(kw), arch or None, input_shape or None, tta_flip,
                        batch_size)
    print_run("evaluate", evaluate_model(spec))


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@model_uri_option
@option("method", default="global_l1", help="see `prune-tracker methods`")
@option("ratio", type=FiniteFloat(low=0, high=1, high_open=True), default=0.5,
        help="fraction of prunable weights (unstructured) or channels (structured) removed")
@option("finetune_epochs", type=FiniteFloat(low=0), default=0)
@option("target_bytes", type=Bytes(), default=None,
        help="search the ratio reaching this footprint instead (e.g. 200KB)")
@option("target_metric", default="footprint_best_bytes", help="footprint metric that --target-bytes applies to")
@click.option("--option", "option_pairs", multiple=True, help="method option name=value (repeatable)")
@qat_option
@arch_option
@input_shape_option
@train_options(epochs_default=None, lr_default=0.01, schedule_default="cosine")
@recovery_options()
@seed_option("pruning and fine-tuning")
@data_options(inherit=True)
@click.pass_context
@trust_pickle_option
@handle_errors
def prune(ctx: click.Context, model_uri: str, method: str, ratio: float, finetune_epochs: float, **kw: Any) -> None:
    """Prune a logged model with a registered method; extra `--name value` pairs are method options."""
    from prune_tracker.core.pruning import get_method
    from prune_tracker.jobs import PruneSpec, prune_model

    get_method(method)  # an unknown method before its options are read
    options = parse_extra_options(list(ctx.args), kw.pop("option_pairs"))
    target_bytes, target_metric = kw.pop("target_bytes"), kw.pop("target_metric")
    arch, input_shape, qat = kw.pop("arch") or None, kw.pop("input_shape") or None, kw.pop("qat")
    recovery, data, run = recovery_spec(kw), data_spec(kw), run_spec(kw)
    spec = PruneSpec(model_uri, method, ratio, options, finetune_epochs, target_bytes, target_metric, qat, arch,
                     input_shape, data, train_config(kw, epochs=finetune_epochs), recovery, run)
    print_run("prune", prune_model(spec))


@click.command()
@option("model_uri", required=True, help="a pruned run's model URI")
@arch_option
@input_shape_option
@qat_option
@train_options(epochs_default=5, lr_default=0.01, schedule_default="cosine")
@recovery_options(schedule_default="")
@seed_option("fine-tuning")
@data_options(inherit=True)
@trust_pickle_option
@handle_errors
def finetune(model_uri: str, arch: str, input_shape: str, qat: str, **kw: Any) -> None:
    """Continue training a pruned model with its masks or architecture kept (stage=finetune)."""
    from prune_tracker.jobs import FinetuneSpec, finetune_model

    recovery = recovery_spec(kw, fallback_schedule=kw["schedule"])
    data, run = data_spec(kw), run_spec(kw)
    spec = FinetuneSpec(model_uri, train_config(kw), recovery, data, run, qat, arch or None, input_shape or None)
    print_run("finetune", finetune_model(spec))


@click.command()
@click.argument("model_uri")
@option("arch", default="", help="architecture of a plain state_dict file")
@option("batch_size", type=click.IntRange(min=1), default=1, help="batch size for the activation peak")
@click.option("--json", "as_json", is_flag=True, help="print the breakdown as JSON")
@input_shape_option
@trust_pickle_option
@handle_errors
def footprint(model_uri: str, arch: str, batch_size: int, as_json: bool, input_shape: str) -> None:
    """Print a model's footprint breakdown (parameters per format, activations, FLOPs, MicroNet)."""
    from prune_tracker.core.footprint import format_table, measure_footprint
    from prune_tracker.core.models.foreign import parse_input_shape
    from prune_tracker.tracking import load_model

    loaded = load_model(model_uri, arch or None)
    shape = loaded.input_shape or parse_input_shape(input_shape) or (3, 32, 32)
    fp = measure_footprint(loaded.model, shape, batch_size=batch_size)
    click.echo(json.dumps({"metrics": fp.metrics, "breakdown": fp.breakdown}, indent=2) if as_json
               else format_table(fp))


@click.command()
def methods() -> None:
    """List the registered pruning methods and their options."""
    from prune_tracker.core.pruning import get_method, known_methods

    for name in known_methods():
        method = get_method(name)
        kind = "structured" if method.structured else "unstructured"
        opts = ", ".join(f"{k}={v!r}" for k, v in method.params.items()) or "-"
        click.echo(f"{name:16s} {kind:12s} {method.summary}\n{'':29s}options: {opts}")


@click.command()
def archs() -> None:
    """List the model architectures with their parameter counts (10 classes)."""
    from prune_tracker.core.models import build_model, count_params, known_archs

    for name in known_archs():
        click.echo(f"{name:10s} {count_params(build_model(name)):>12,d} parameters")
    names = [a.removeprefix("torchvision:") for a in known_archs(torchvision=True) if a.startswith("torchvision:")]
    click.echo(f"torchvision:<builder>, weights=None, num_classes from the dataset; builders: {', '.join(names)}")


compare_filter_options = stack(
    option("experiment_names", default="prune-tracker", help="comma-separated experiments to search"),
    click.option("--dataset", default="", help="only runs on this dataset"),
    click.option("--arch", default="", help="only runs of this architecture"),
    click.option("--method", default="", help="only runs of this pruning method"),
    click.option("--stage", default="", help="only runs of this stage (train, prune, finetune)"),
    click.option("--filter", "filter_string", default="", help="a raw MLflow filter string, ANDed"),
    click.option("--metric", default="val_accuracy", show_default=True,
                 help="accuracy metric the front and the answers rank on (test accuracy is shown beside it)"),
    click.option("--footprint", default="footprint_best_bytes", show_default=True,
                 help="footprint metric on the x axis; best (storage: weights in their smallest format), total "
                      "(+ activations), runtime (what a runtime holds: every tensor dense, ort_int8 its .onnx file)"),
    click.option("--budget", default="", help="best accuracy within this footprint, e.g. 200KB"),
    click.option("--precisions", default="",
                 help="points per precision: fp16, int8, int4, w8a8, ort_int8 (comma list; default: every one found)"),
    option("min_accuracy", type=FiniteFloat(low=0, high=1, optional=True), default=None,
           help="smallest footprint above this accuracy"),
    click.option("--aggregate", type=click.Choice(AGGREGATES), default="none", show_default=True,
                 help="seed: runs identical but for the seed become one point (mean, std over distinct seeds, n)"),
)


def compare_scope(kw: dict[str, Any]) -> dict[str, Any]:
    names = split_list(kw.pop("experiment_names"))
    if not names:
        raise ValueError("experiment_names is empty; name at least one experiment")
    return {"experiment_names": names, **{k: (v or None) if isinstance(v, str) else v for k, v in kw.items()}}


@click.command()
@compare_filter_options
@bool_option("register", default=False,
             help="register the front's models (or the budget winner as champion); --register [true|false]")
@option("registered_name", default="", help="registry name (default prune-tracker-<dataset>-<arch>)")
@handle_errors
def compare(register: bool, registered_name: str, **kw: Any) -> None:
    """Pareto front of accuracy vs footprint across runs; budget and floor answers; optional registration."""
    from prune_tracker.analysis.compare import run_compare

    result = run_compare(**compare_scope(kw), register=register, registered_name=registered_name or None)
    click.echo(result.table)
    for run_id, reason in result.missing:
        click.echo(f"skipped {run_id}: {reason}")
    if result.budget_bytes is not None:
        best = result.best_under_budget
        click.echo(f"best within budget: {best.run_id if best else 'nothing fits'}")
    if result.min_accuracy is not None:
        small = result.smallest_above_floor
        click.echo(f"smallest above floor: {small.run_id if small else 'nothing reaches it'}")
    if result.registration is not None:
        for name, version in result.registration.champions.items():
            click.echo(f"registered {name}, champion = version {version} ({result.registration.champion_uri(name)})")
    click.echo(f"compare run {result.run_id} finished")


@click.command()
@compare_filter_options
@option("out_dir", default="", help="also keep the HTML here")
@handle_errors
def report(out_dir: str, **kw: Any) -> None:
    """Self-contained HTML report (fronts, method table, ratio curves, sparsity, footprint), logged as a run."""
    from prune_tracker.analysis.report import run_report

    scope = compare_scope(kw)
    scope.pop("stage")
    result = run_report(scope.pop("experiment_names"), out_dir or None, **scope)
    click.echo(f"report {result.path} (run {result.run_id})")


COMMANDS = (train, evaluate, prune, finetune, footprint, methods, archs, compare, report)
