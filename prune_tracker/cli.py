"""`prune-tracker` command line: one click command per MLproject entry point (the scripts in
`entrypoints/` call these same commands). Commands parse and validate, then call `prune_tracker.jobs`."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .data import AUTO, DATASETS
from .quant import PRECISIONS, QAT_CHOICES, validate_precisions
from .seeds import AGGREGATES
from .training import FINETUNE_SCHEDULES, SCHEDULES, TrainConfig

DEVICES = ("auto", "cpu", "cuda")


class FiniteFloat(click.ParamType):
    """A float that rejects NaN/inf and, optionally, values outside [low, high) or [low, high]."""

    name = "float"

    def __init__(self, low: float | None = None, high: float | None = None, high_open: bool = False,
                 optional: bool = False):
        self.low, self.high, self.high_open, self.optional = low, high, high_open, optional

    def convert(self, value: Any, param, ctx) -> float | None:
        if self.optional and value in ("", None):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        bad_high = self.high is not None and (number >= self.high if self.high_open else number > self.high)
        if not math.isfinite(number) or (self.low is not None and number < self.low) or bad_high:
            bounds = f"{self.low if self.low is not None else '-inf'} <= x " + (
                f"{'<' if self.high_open else '<='} {self.high}" if self.high is not None else ""
            )
            self.fail(f"{value!r} is not allowed; expected a finite number with {bounds}", param, ctx)
        return number


class Bytes(click.ParamType):
    name = "bytes"

    def convert(self, value: Any, param, ctx) -> int | None:
        if value in (None, "", "0", 0):
            return None
        from .footprint import parse_bytes

        try:
            return parse_bytes(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


class Width(click.ParamType):
    """A width multiplier: a finite number > 0 (`models.width`)."""

    name = "width"

    def convert(self, value: Any, param, ctx) -> float:
        from .models.width import validate_width

        try:
            return validate_width(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


class Seeds(click.ParamType):
    """A comma-separated list of seeds (`0,1,2`); empty = the one `--seed`."""

    name = "seeds"

    def convert(self, value: Any, param, ctx) -> list[int]:
        from .seeds import parse_seeds

        if isinstance(value, list):
            return value
        try:
            return parse_seeds(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


def handle_errors(fn: Callable) -> Callable:
    """Bad input and failures end with one line on stderr, exit code 2, and no run left RUNNING."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .pipeline import PipelineError
        from .tracking import TrackingError, fail_launched_run

        try:
            return fn(*args, **kwargs)
        except (ValueError, TrackingError, FileNotFoundError, PipelineError) as err:
            fail_launched_run()
            message = err.message if isinstance(err, TrackingError) else str(err)
            click.echo(
                f"Error: {message.strip().splitlines()[0] if message.strip() else type(err).__name__}",
                err=True,
            )
            sys.exit(2)

    return wrapper


class EmptyIsNone(click.ParamType):
    """Another type, or None for an empty value (the MLproject passes "" for "take the parent run's")."""

    def __init__(self, inner: click.ParamType):
        self.inner, self.name = inner, inner.name

    def convert(self, value: Any, param, ctx) -> Any:
        return None if value in (None, "") else self.inner.convert(value, param, ctx)


class ValSize(click.ParamType):
    """`auto` or a non-negative integer."""

    name = "auto|int"

    def convert(self, value: Any, param, ctx) -> int | str | None:
        if value in (None, ""):
            return None
        if str(value).strip().lower() == AUTO:
            return AUTO
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not allowed; expected {AUTO!r} or an integer >= 0", param, ctx)
        if number < 0:
            self.fail(f"{value!r} is not allowed; expected {AUTO!r} or an integer >= 0", param, ctx)
        return number


def data_options(inherit: bool = False, train_subset_default: int = 0, val_size_default: int | str = AUTO
                 ) -> Callable:
    """Data and run options. With `inherit` (commands that load a model), the split options default to the
    parent run's values (None here) and `--new-split` allows a different split explicitly."""
    split_default = (lambda value: None) if inherit else (lambda value: value)
    parent_note = " (default: the parent run's)" if inherit else ""

    def decorate(fn: Callable) -> Callable:
        options = [
            click.option("--dataset", type=EmptyIsNone(click.Choice(DATASETS)), default=split_default("cifar10"),
                         show_default=not inherit, help=f"dataset{parent_note}"),
            click.option("--data-dir", "--data_dir", "data_dir", default="",
                         help="torchvision CIFAR root, ImageFolder tree or .tar/.tar.gz of one (no download)"),
            click.option("--train-subset", "--train_subset", "train_subset", type=EmptyIsNone(click.IntRange(min=0)),
                         default=split_default(train_subset_default), show_default=not inherit,
                         help=f"class-balanced training subset size; 0 = all{parent_note}"),
            click.option("--val-size", "--val_size", "val_size", type=ValSize(),
                         default=split_default(val_size_default), show_default=not inherit,
                         help=f"validation images carved from the training set; auto = 5,000 for CIFAR, "
                              f"10% of a smaller set{parent_note}"),
            click.option("--seed", type=EmptyIsNone(click.IntRange(min=0)), default=split_default(0),
                         show_default=not inherit,
                         help=f"data split and training seed{parent_note}"),
            click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True),
            click.option("--experiment-name", "--experiment_name", "experiment_name", default="prune-tracker",
                         show_default=True),
            click.option("--run-name", "--run_name", "run_name", default=None),
            click.option("--progress/--no-progress", default=True, help="tqdm progress bars"),
            click.option("--precisions", default=",".join(PRECISIONS), show_default=True,
                         help="deployment precisions measured on every model (fp16, int8, int4; '' = none)"),
        ]
        if inherit:
            options.insert(5, bool_option("--new-split", "--new_split", "new_split", default=False,
                                          help="allow split options that differ from the parent run's"))
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def bool_option(*names: str, default: bool, help: str) -> Callable:  # noqa: A002 - click's keyword
    """A boolean option that takes a value (`--name true|false`, as MLflow passes it) or stands alone (true)."""
    return click.option(*names, type=click.BOOL, default=default, is_flag=False, flag_value=True,
                        show_default=True, help=help)


zero_init_option = bool_option(
    "--zero-init-residual",
    "--zero_init_residual",
    "zero_init_residual",
    default=False,
    help="ResNets: start every residual block as the identity (last BN weight zeroed)",
)


def _check_arch(arch: str, zero_init: bool, width: float = 1.0) -> None:
    """Unknown arch, zero_init_residual on a model without residual blocks, or a width the arch does not take:
    fail before any data is read."""
    from .models import build_model

    build_model(arch, zero_init=zero_init, width=width)


def option(name: str, **kwargs: Any) -> Callable:
    """A click option spelled `--a-b` and `--a_b` (MLflow passes the underscore form), stored as `a_b`."""
    spellings = dict.fromkeys((f"--{name.replace('_', '-')}", f"--{name}"))
    kwargs.setdefault("show_default", "default" in kwargs)
    return click.option(*spellings, name, **kwargs)


FRACTION = FiniteFloat(low=0, high=1, high_open=True)


def train_options(
    epochs_default: float | None, lr_default: float, schedule_default: str = "onecycle", ema_default: float = 0.0,
    resize_default: str = "",
) -> Callable:
    """Training recipe options; `epochs_default=None` leaves out `--epochs` (prune names its budget
    `--finetune-epochs`)."""

    def decorate(fn: Callable) -> Callable:
        options = [
            *([option("epochs", type=FiniteFloat(low=0), default=epochs_default)] if epochs_default is not None
              else []),
            option("batch_size", type=click.IntRange(min=1), default=128),
            option("lr", type=FiniteFloat(low=0), default=lr_default, help="peak learning rate"),
            option("weight_decay", type=FiniteFloat(low=0), default=5e-4),
            option("momentum", type=FRACTION, default=0.9),
            option("schedule", type=click.Choice(SCHEDULES), default=schedule_default),
            option("warmup_fraction", type=FRACTION, default=0.25),
            option("label_smoothing", type=FRACTION, default=0.1),
            option("ema_decay", type=FRACTION, default=ema_default, help="EMA of weights; 0 = off"),
            click.option("--tta-flip/--no-tta-flip", "--tta_flip/--no_tta_flip", "tta_flip", default=True,
                         show_default=True, help="average logits with the mirrored image at evaluation"),
            option("resize_schedule", default=resize_default,
                   help="progressive resizing, e.g. '16:0.4,24:0.3' (size px: fraction of training)"),
            bool_option("--bn-weight-decay", "--bn_weight_decay", "bn_weight_decay", default=True,
                        help="weight decay on BatchNorm and bias parameters too; false exempts them"),
        ]
        for one in reversed(options):
            fn = one(fn)
        return fn

    return decorate


model_uri_option = option("model_uri", required=True,
                          help="runs:/<id>/model (or model_int8 / model_int4), models:/<name>@<alias>, a logged model "
                               "id, or a local .pt file")
arch_option = option("arch", default="", help="architecture of a plain state_dict file or a model logged elsewhere")
input_shape_option = option("input_shape", default="",
                            help="one input image's shape, e.g. 3,32,32, for a model whose MLflow signature has none "
                                 "(default: the signature's, else the dataset's images)")


def _input_shape(text: str) -> str | None:
    """The `input_shape` option checked at once (one line on a bad value); '' = not given."""
    from .models.foreign import parse_input_shape

    parse_input_shape(text)
    return text or None


def recovery_options(schedule_default: str = "cosine") -> Callable:
    """The recovery-recipe options of prune, finetune and main (see `jobs.Recovery`)."""
    schedules = (*FINETUNE_SCHEDULES, "") if not schedule_default else FINETUNE_SCHEDULES

    def decorate(fn: Callable) -> Callable:
        options = [
            option("finetune_schedule", type=click.Choice(schedules), default=schedule_default,
                   help="cosine | rewind (learning-rate rewinding to the parent's train schedule) | constant"
                        + ("; '' = --schedule" if not schedule_default else "")),
            option("rewind_fraction", type=EmptyIsNone(FRACTION), default=None,
                   help="rewind: replay the parent's schedule from this fraction of it (default: its last "
                        "fine-tuning-length epochs)"),
            option("distill_alpha", type=FiniteFloat(low=0, high=1), default=0.0,
                   help="knowledge distillation weight (0 = off)"),
            option("distill_temperature", type=FiniteFloat(low=1e-6), default=4.0),
            option("teacher_uri", default="", help="distillation teacher (default: the unpruned model)"),
            option("rounds", type=EmptyIsNone(click.IntRange(min=1)), default=None,
                   help="prune in this many rounds with retraining between (default: one shot; han: its own)"),
            option("round_epochs", type=EmptyIsNone(FiniteFloat(low=0)), default=None,
                   help="retraining epochs per round (default 1; han: its own)"),
        ]
        for one in reversed(options):
            fn = one(fn)
        return fn

    return decorate


def _recovery(kw: dict[str, Any], fallback_schedule: str = "cosine"):
    from .jobs import Recovery

    return Recovery(kw.pop("finetune_schedule") or fallback_schedule, kw.pop("rewind_fraction"),
                    kw.pop("distill_alpha"), kw.pop("distill_temperature"), kw.pop("teacher_uri") or None,
                    kw.pop("rounds"), kw.pop("round_epochs"))


def _configs(kw: dict[str, Any]):
    from .jobs import DataOptions, RunOptions

    data = DataOptions(kw.pop("dataset"), kw.pop("data_dir") or None, kw.pop("train_subset"), kw.pop("val_size"),
                       kw["seed"], kw.pop("new_split", False))
    run = RunOptions(kw.pop("experiment_name"), kw.pop("device"), kw.pop("progress"), kw.pop("run_name"),
                     precisions=validate_precisions(_split_list(kw.pop("precisions"))))
    config_fields = set(TrainConfig.__dataclass_fields__)
    if kw.get("seed") is None:
        kw.pop("seed")  # the parent run's seed, resolved by the job
    config = TrainConfig(**{k: kw.pop(k) for k in list(kw) if k in config_fields})
    return data, run, config


def _print_run(stage: str, run_id: str) -> None:
    from .tracking import ui_hint

    click.echo(f"{stage} run {run_id} finished")
    click.echo(ui_hint(run_id))


class OneLineErrors(click.Group):
    """Click's own errors (bad option value, missing option) as one line and exit 2, like every other error,
    instead of a usage block."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("standalone_mode", None)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as err:
            click.echo(f"Error: {err.format_message()}", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """MLflow-tracked pruning of CIFAR CNNs: train, prune, fine-tune, evaluate, compare."""


@cli.command()
@click.option("--arch", default="resnet20", show_default=True, help="see `prune-tracker archs`")
@click.option(
    "--resume-run-id",
    "--resume_run_id",
    "resume_run_id",
    default="",
    help="continue that run's last checkpoint",
)
@option("width", type=Width(), default=1.0,
        help="channel multiplier of the zoo's ResNets and VGGs (round(width x channels), at least 1); 1 = published")
@train_options(epochs_default=30, lr_default=0.2, ema_default=0.0)
@zero_init_option
@data_options()
@handle_errors
def train(arch: str, resume_run_id: str, **kw) -> None:
    """Train a CIFAR model and log it as an MLflow run (stage=train)."""
    from .jobs import train as train_job

    _check_arch(arch, kw["zero_init_residual"], kw["width"])
    data, run, config = _configs(kw)
    _print_run("train", train_job(arch, data, config, run, resume_run_id or None))


@cli.command()
@model_uri_option
@arch_option
@input_shape_option
@click.option(
    "--tta-flip/--no-tta-flip", "--tta_flip/--no_tta_flip", "tta_flip", default=True, show_default=True
)
@option("batch_size", type=click.IntRange(min=1), default=500)
@data_options(inherit=True)
@handle_errors
def evaluate(model_uri: str, arch: str, input_shape: str, tta_flip: bool, batch_size: int, **kw) -> None:
    """Evaluate a model: top-1/top-5, loss, per-class accuracy, confusion matrix, CPU latency."""
    from .jobs import evaluate_model

    shape = _input_shape(input_shape)
    data, run, _ = _configs(kw)
    _print_run("evaluate", evaluate_model(model_uri, data, run, arch or None, tta_flip, batch_size, shape))


def _parse_extra_options(args: list[str]) -> dict[str, str]:
    """`--key value` / `--key=value` pairs that MLflow appends for undeclared `-P key=value`."""
    options, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; method options are given as --name value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ValueError(f"method option --{key} has no value")
            value, i = args[i + 1], i + 1
        options[key.replace("-", "_")] = value
        i += 1
    return options


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@model_uri_option
@click.option("--method", default="global_l1", show_default=True, help="see `prune-tracker methods`")
@click.option(
    "--ratio",
    type=FiniteFloat(low=0, high=1, high_open=True),
    default=0.5,
    show_default=True,
    help="fraction of prunable weights (unstructured) or channels (structured) removed",
)
@click.option(
    "--finetune-epochs",
    "--finetune_epochs",
    "finetune_epochs",
    type=FiniteFloat(low=0),
    default=0,
    show_default=True,
)
@click.option(
    "--target-bytes",
    "--target_bytes",
    "target_bytes",
    type=Bytes(),
    default=None,
    help="search the ratio reaching this footprint instead (e.g. 200KB)",
)
@click.option(
    "--target-metric",
    "--target_metric",
    "target_metric",
    default="footprint_best_bytes",
    show_default=True,
    help="footprint metric that --target-bytes applies to",
)
@click.option("--option", "option_pairs", multiple=True, help="method option name=value (repeatable)")
@click.option("--qat", type=click.Choice(QAT_CHOICES), default="none", show_default=True,
              help="quantisation-aware fine-tuning at this precision (fake-quantised weights, straight-through)")
@arch_option
@input_shape_option
@train_options(epochs_default=None, lr_default=0.01, schedule_default="cosine")
@recovery_options()
@data_options(inherit=True)
@click.pass_context
@handle_errors
def prune(
    ctx: click.Context,
    model_uri: str,
    method: str,
    ratio: float,
    finetune_epochs: float,
    target_bytes: int | None,
    target_metric: str,
    option_pairs: tuple[str, ...],
    qat: str,
    **kw,
) -> None:
    """Prune a logged model with a registered method; extra `--name value` pairs are method options."""
    from .jobs import prune_model
    from .pruning import get_method

    get_method(method)
    raw = _parse_extra_options(list(ctx.args))
    for pair in option_pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise ValueError(f"--option {pair!r} must look like name=value")
        raw[key] = value
    options = get_method(method).resolve_options(raw)
    arch = kw.pop("arch") or None
    input_shape = _input_shape(kw.pop("input_shape"))
    recovery = _recovery(kw)
    data, run, config = _configs(kw)
    _print_run(
        "prune",
        prune_model(
            model_uri,
            method,
            ratio,
            data,
            config,
            run,
            finetune_epochs,
            options,
            target_bytes,
            target_metric,
            config.tta_flip,
            arch,
            qat,
            recovery,
            input_shape=input_shape,
        ),
    )


@cli.command()
@click.option("--model-uri", "--model_uri", "model_uri", required=True, help="a pruned run's model URI")
@arch_option
@input_shape_option
@click.option("--qat", type=click.Choice(QAT_CHOICES), default="none", show_default=True,
              help="quantisation-aware fine-tuning at this precision (fake-quantised weights, straight-through)")
@train_options(epochs_default=5, lr_default=0.01, schedule_default="cosine")
@recovery_options(schedule_default="")
@data_options(inherit=True)
@handle_errors
def finetune(model_uri: str, arch: str, input_shape: str, qat: str, **kw) -> None:
    """Continue training a pruned model with its masks or architecture kept (stage=finetune)."""
    from .jobs import finetune_model

    shape = _input_shape(input_shape)
    recovery = _recovery(kw, fallback_schedule=kw["schedule"])
    if recovery.rounds is not None or recovery.round_epochs is not None:
        raise ValueError("rounds / round_epochs belong to prune (they interleave pruning and retraining)")
    data, run, config = _configs(kw)
    _print_run("finetune", finetune_model(model_uri, config.epochs, data, config, run, config.tta_flip,
                                          arch or None, qat, recovery, input_shape=shape))


@cli.command()
@click.argument("model_uri")
@click.option("--arch", default="", help="architecture of a plain state_dict file")
@click.option(
    "--batch-size",
    "batch_size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="batch size for the activation peak",
)
@click.option("--json", "as_json", is_flag=True, help="print the breakdown as JSON")
@input_shape_option
@handle_errors
def footprint(model_uri: str, arch: str, batch_size: int, as_json: bool, input_shape: str) -> None:
    """Print a model's footprint breakdown (parameters per format, activations, FLOPs, MicroNet)."""
    from .footprint import format_table, measure_footprint
    from .models.foreign import parse_input_shape
    from .tracking import load_model

    loaded = load_model(model_uri, arch or None)
    shape = loaded.input_shape or parse_input_shape(input_shape) or (3, 32, 32)
    fp = measure_footprint(loaded.model, shape, batch_size=batch_size)
    click.echo(
        json.dumps({"metrics": fp.metrics, "breakdown": fp.breakdown}, indent=2)
        if as_json
        else format_table(fp)
    )


@cli.command()
def methods() -> None:
    """List the registered pruning methods and their options."""
    from .pruning import get_method, known_methods

    for name in known_methods():
        method = get_method(name)
        kind = "structured" if method.structured else "unstructured"
        opts = ", ".join(f"{k}={v!r}" for k, v in method.params.items()) or "-"
        click.echo(f"{name:16s} {kind:12s} {method.summary}\n{'':29s}options: {opts}")


@cli.command()
def archs() -> None:
    """List the model architectures with their parameter counts (10 classes)."""
    from .models import build_model, count_params, known_archs

    for name in known_archs():
        click.echo(f"{name:10s} {count_params(build_model(name)):>12,d} parameters")
    names = [a.removeprefix("torchvision:") for a in known_archs(torchvision=True) if a.startswith("torchvision:")]
    click.echo(f"torchvision:<builder>, weights=None, num_classes from the dataset; builders: {', '.join(names)}")


@cli.command()
@click.option("--experiment-names", "--experiment_names", "experiment_names", default="",
              help="comma-separated experiments to check (default: every experiment)")
@click.option("--stale-after", "--stale_after", "stale_after", default="15m", show_default=True,
              help="a run of another host (or without owner tags) whose last heartbeat is older is an orphan: "
                   "90s, 15m, 2h, 1d, or off")
@click.option("--dry-run", "--dry_run", "dry_run", is_flag=True, help="only list the orphan runs")
@handle_errors
def gc(experiment_names: str, stale_after: str, dry_run: bool) -> None:
    """Mark orphan runs KILLED: RUNNING runs whose process is gone (this host) or silent for --stale-after."""
    from .tracking.gc import mark_orphans_killed, parse_duration

    seconds = parse_duration(stale_after)  # a bad value fails before any server call
    orphans = mark_orphans_killed(_split_list(experiment_names) or None, seconds, dry_run=dry_run)
    verb = "orphan (dry run, not marked)" if dry_run else "marked KILLED"
    for orphan in orphans:
        click.echo(f"{verb}: {orphan.run_id} {orphan.experiment_name}/{orphan.run_name}: {orphan.reason}")
    click.echo(f"gc: {len(orphans)} orphan run(s) {'found' if dry_run else 'marked KILLED'}")



def run_entrypoint(command: click.Command) -> None:
    """Run a command as an MLproject entry point: a usage error (bad type, missing value) also fails the
    run that `mlflow run` created, instead of leaving it RUNNING."""
    from .tracking import fail_launched_run

    try:
        command.main(standalone_mode=False)
    except click.ClickException as err:
        fail_launched_run()
        click.echo(f"Error: {err.format_message()}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        fail_launched_run()
        sys.exit(130)


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def compare_filter_options(fn: Callable) -> Callable:
    options = [
        click.option("--experiment-names", "--experiment_names", "experiment_names", default="prune-tracker",
                     show_default=True, help="comma-separated experiments to search"),
        click.option("--dataset", default="", help="only runs on this dataset"),
        click.option("--arch", default="", help="only runs of this architecture"),
        click.option("--method", default="", help="only runs of this pruning method"),
        click.option("--stage", default="", help="only runs of this stage (train, prune, finetune)"),
        click.option("--filter", "filter_string", default="", help="a raw MLflow filter string, ANDed"),
        click.option("--metric", default="val_accuracy", show_default=True,
                     help="accuracy metric the front and the answers rank on (test accuracy is shown beside it)"),
        click.option("--footprint", default="footprint_best_bytes", show_default=True,
                     help="footprint metric on the x axis"),
        click.option("--budget", default="", help="best accuracy within this footprint, e.g. 200KB"),
        click.option("--precisions", default="",
                     help="points per precision: fp16, int8, int4, w8a8 (comma list; default: every one found)"),
        click.option("--min-accuracy", "--min_accuracy", "min_accuracy",
                     type=FiniteFloat(low=0, high=1, optional=True), default=None,
                     help="smallest footprint above this accuracy"),
        click.option("--aggregate", type=click.Choice(AGGREGATES), default="none", show_default=True,
                     help="seed: runs identical but for the seed become one point (mean, std, n)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _compare_scope(kw: dict[str, Any]) -> dict[str, Any]:
    names = _split_list(kw.pop("experiment_names"))
    if not names:
        raise ValueError("experiment_names is empty; name at least one experiment")
    return {"experiment_names": names, **{k: (v or None) if isinstance(v, str) else v for k, v in kw.items()}}


@cli.command()
@compare_filter_options
@bool_option("--register", default=False,
             help="register the front's models (or the budget winner as champion); --register [true|false]")
@click.option("--registered-name", "--registered_name", "registered_name", default="",
              help="registry name (default prune-tracker-<dataset>-<arch>)")
@handle_errors
def compare(register: bool, registered_name: str, **kw) -> None:
    """Pareto front of accuracy vs footprint across runs; budget and floor answers; optional registration."""
    from .compare import run_compare

    result = run_compare(**_compare_scope(kw), register=register, registered_name=registered_name or None)
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


@cli.command()
@compare_filter_options
@click.option("--out-dir", "--out_dir", "out_dir", default="", help="also keep the HTML here")
@handle_errors
def report(out_dir: str, **kw) -> None:
    """Self-contained HTML report (fronts, method table, ratio curves, sparsity, footprint), logged as a run."""
    from .report import run_report

    scope = _compare_scope(kw)
    scope.pop("stage")
    result = run_report(scope.pop("experiment_names"), out_dir or None, **scope)
    click.echo(f"report {result.path} (run {result.run_id})")


@cli.command(name="main")
@click.option("--arch", default="resnet20", show_default=True)
@click.option("--methods", default="lamp,global_l1", show_default=True, help="comma-separated pruning methods")
@click.option("--ratios", default="0.75", show_default=True, help="comma-separated pruning ratios")
@click.option("--finetune-epochs", "--finetune_epochs", "finetune_epochs", type=FiniteFloat(low=0), default=1.0,
              show_default=True)
@click.option("--finetune-lr", "--finetune_lr", "finetune_lr", type=FiniteFloat(low=0), default=0.01,
              show_default=True)
@click.option("--footprint", default="footprint_best_bytes", show_default=True)
@click.option("--budget", default="1/8", show_default=True,
              help="footprint budget for the champion: bytes (200KB) or a fraction of the base's fp32 bytes (1/8)")
@bool_option("--register", default=True, help="register the front's models; --register [true|false]")
@click.option("--registered-name", "--registered_name", "registered_name", default="")
@click.option("--seeds", type=Seeds(), default="", help="run the whole study once per seed, e.g. 0,1,2, and compare "
              "the mean over seeds (default: the one --seed)")
@bool_option("--baselines", default=False,
             help="also train a dense-small baseline per pruned model: at most its bytes, the same total epochs")
@train_options(epochs_default=5, lr_default=0.2, ema_default=0.0, resize_default="16:0.5,24:0.3")
@recovery_options()
@zero_init_option
@data_options(train_subset_default=0, val_size_default=2000)
@handle_errors
def main_pipeline(arch: str, methods: str, ratios: str, finetune_epochs: float, finetune_lr: float,
                  footprint: str, budget: str, register: bool, registered_name: str, seeds: list[int],
                  baselines: bool, **kw) -> None:
    """The whole study: train, prune with each method at each ratio, fine-tune, (dense-small baselines,) evaluate,
    compare, register, report — each step a nested run, once per seed; finished steps are reused on a rerun."""
    from .pipeline import PipelineConfig, run_pipeline

    _check_arch(arch, kw["zero_init_residual"])
    recovery = _recovery(kw)
    data, run, config = _configs(kw)
    try:
        ratio_values = [float(r) for r in _split_list(ratios)]
    except ValueError:
        raise ValueError(f"ratios={ratios!r} must be comma-separated numbers in [0, 1)") from None
    pipeline = PipelineConfig(arch=arch, data=data, train=config, methods=_split_list(methods), ratios=ratio_values,
                              finetune_epochs=finetune_epochs, finetune_lr=finetune_lr, tta_flip=config.tta_flip,
                              footprint=footprint, budget=budget or None, register=register,
                              registered_name=registered_name or None, experiment_name=run.experiment_name,
                              device=run.device, progress=run.progress, precisions=run.precisions,
                              recovery=recovery, seeds=seeds, baselines=baselines)
    result = run_pipeline(pipeline)
    click.echo(f"pipeline run {result.run_id} finished: {len(result.steps)} steps "
               f"({len(result.reused)} reused)")
    if result.champion_uri:
        click.echo(f"champion: {result.champion_uri}")


# ---------------------------------------------------------------- sweep and search (prune_tracker/sweep.py, search.py)


def _recipe_param(name: str) -> click.Parameter | None:
    """The `prune` option spelled `name` (underscores or dashes) when it is a recipe option a study may vary."""
    from .sweep import RECIPE_OPTIONS

    spelling = {f"--{name}", f"--{name.replace('_', '-')}"}
    return next((p for p in prune.params if p.name in RECIPE_OPTIONS and (p.name == name or spelling & set(p.opts))),
                None)


def _study_options(args: list[str], option_pairs: tuple[str, ...]) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """Extra `--name value` pairs (MLflow's undeclared `-P name=value`) and `--option name=value`: prune's recipe
    options, each value checked by prune's own option type (a comma list: several values), and method options as
    given (the study splits and checks them per method)."""
    from .sweep import UNSPLIT_OPTIONS, split_values

    raw = _parse_extra_options(args)
    methods_only = {}
    for pair in option_pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise ValueError(f"--option {pair!r} must look like name=value")
        methods_only[key] = value
    recipe, options = {}, dict(methods_only)
    for name, value in raw.items():
        param = _recipe_param(name)
        if param is None:
            options[name] = value
            continue
        values = [value] if param.name in UNSPLIT_OPTIONS else split_values(value)
        recipe[param.name] = [param.type.convert(v, param, None) for v in values]
    return recipe, options


def executor_options(fn: Callable) -> Callable:
    from .sweep import EXECUTORS

    options = [
        option("executor", type=click.Choice(EXECUTORS), default="local",
               help="local: trials one after another here; ray: Ray tasks"),
        option("ray_address", default="", help="executor=ray: auto (the running cluster) or ray://host:port; "
                                                "empty: a local ray.init(num_cpus=ray_num_cpus)"),
        option("ray_num_cpus", type=click.IntRange(min=0), default=0, help="CPUs of a local Ray (0: every core)"),
        option("cpus_per_trial", type=click.IntRange(min=1), default=1,
               help="CPUs reserved for each trial and its torch threads"),
        click.option("--option", "option_pairs", multiple=True, help="method option name=value (repeatable)"),
    ]
    for one in reversed(options):
        fn = one(fn)
    return fn


def _prune_base(model_uri: str, kw: dict[str, Any]):
    from .sweep import PruneBase

    data, run, _ = _configs(kw)
    return PruneBase(model_uri, data, precisions=run.precisions, device=run.device,
                     experiment_name=run.experiment_name), run


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@model_uri_option
@click.option("--methods", default="lamp,global_l1", show_default=True, help="comma-separated pruning methods")
@click.option("--ratios", default="0.5,0.75", show_default=True, help="comma-separated pruning ratios")
@option("target_bytes", default="", help="comma-separated footprint targets (e.g. 100KB,200KB) instead of ratios: "
                                         "each trial searches the ratio reaching one")
@option("seeds", default="0", help="comma-separated pruning / fine-tuning seeds (the split stays the base run's)")
@bool_option("--baselines", default=False,
             help="also train a dense-small baseline per finished trial: at most its bytes, the same total epochs")
@executor_options
@data_options(inherit=True)
@click.pass_context
@handle_errors
def sweep(ctx: click.Context, model_uri: str, methods: str, ratios: str, target_bytes: str, seeds: str, baselines: bool,
          executor: str, ray_address: str, ray_num_cpus: int, cpus_per_trial: int, option_pairs: tuple[str, ...],
          **kw) -> None:
    """Prune one base model with methods x ratios (or target_bytes) x seeds x recipe options (extra `--name a,b`:
    prune's recipe options and method options), each trial a prune run nested under a stage=sweep run; finished
    trials are reused, a failed one is retried once; ends with compare over the trials."""
    from .sweep import SweepConfig, parse_ratios, parse_seed_list, parse_target_bytes, run_sweep

    recipe_axes, option_axes = _study_options(list(ctx.args), option_pairs)
    base, run = _prune_base(model_uri, kw)
    config = SweepConfig(base, _split_list(methods), parse_ratios(ratios), parse_target_bytes(target_bytes),
                         parse_seed_list(seeds), recipe_axes, option_axes, executor, ray_address or None,
                         ray_num_cpus or None, cpus_per_trial, run.run_name, baselines=baselines, log=click.echo)
    result = run_sweep(config)
    reused = sum(t.reused for t in result.trials)
    click.echo(f"sweep run {result.run_id} finished: {len(result.finished)} trials ({reused} reused)")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@model_uri_option
@option("budget", required=True, help="footprint budget: 100KB, 1.5MB, 120000 (bytes) or 1/8 of the base's fp32 bytes")
@option("trials", type=click.IntRange(min=1), default=20, help="Optuna trials (prune runs)")
@click.option("--methods", default="lamp,global_l1,li_filters", show_default=True,
              help="comma-separated pruning methods to choose from")
@option("footprint", default="footprint_best_bytes", help="footprint metric family the budget applies to")
@option("sampler_seed", type=click.IntRange(min=0), default=0, help="seed of the TPE sampler and of every trial")
@option("registered_name", default="", help="registry name of the champion (default prune-tracker-<dataset>-<arch>)")
@executor_options
@data_options(inherit=True)
@click.pass_context
@handle_errors
def search(ctx: click.Context, model_uri: str, budget: str, trials: int, methods: str, footprint: str,
           sampler_seed: int, registered_name: str, executor: str, ray_address: str, ray_num_cpus: int,
           cpus_per_trial: int, option_pairs: tuple[str, ...], **kw) -> None:
    """Optuna search for the most accurate model (validation) within a footprint budget: chooses the method, the
    precision fitted to the budget (hence the ratio) and the recipe options (extra `--name a,b` are choices);
    registers the winner as champion. Each trial is a prune run nested under a stage=search run."""
    from .search import SearchConfig, run_search

    recipe_space, option_space = _study_options(list(ctx.args), option_pairs)
    base, run = _prune_base(model_uri, kw)
    result = run_search(SearchConfig(base, budget, trials, _split_list(methods), recipe_space, option_space,
                                     footprint, sampler_seed, executor, ray_address or None, ray_num_cpus or None,
                                     cpus_per_trial, registered_name or None, run.run_name, log=click.echo))
    test = "-" if result.test_accuracy is None else f"{result.test_accuracy:.4f}"
    click.echo(f"champion: {result.champion_uri} (version {result.champion_version}; run {result.champion_run_id}, "
               f"{result.method}, {result.champion_precision}, {result.champion_bytes:.0f} B; val_accuracy "
               f"{result.val_accuracy:.4f}, test_accuracy {test} reported, not used to select)")
    click.echo(f"search run {result.run_id} finished")


# ---------------------------------------------------------------- team server (prune_tracker/tracking/server.py)

NEW_USER_PASSWORD_ENV = "PRUNE_TRACKER_NEW_USER_PASSWORD"


@cli.command()
@click.option("--root", type=click.Path(file_okay=False, path_type=str), default="",
              help="server root: cluster, auth config, artifacts, logs (default ~/.prune-tracker/server; "
                   "/var/lib/prune-tracker/server as root; or $PRUNE_TRACKER_SERVER_ROOT)")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind (0.0.0.0: all)")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--pg-port", "--pg_port", "pg_port", type=click.IntRange(1, 65535), default=54329,
              show_default=True, help="port of the server's PostgreSQL cluster (127.0.0.1 only)")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--auth", is_flag=True, default=False, help="MLflow's basic-auth app; needs MLFLOW_AUTH_ADMIN_PASSWORD "
              "(>= 12 characters) and MLFLOW_FLASK_SERVER_SECRET_KEY in the environment")
@click.option("--artifacts-destination", "--artifacts_destination", "artifacts_destination", default="",
              help="where proxied artifacts go: a directory (default <root>/artifacts) or s3://bucket/prefix")
@click.option("--allowed-hosts", "--allowed_hosts", "allowed_hosts", default="",
              help="Host headers to accept when serving beyond localhost (mlflow server --allowed-hosts)")
@click.option("--default-permission", "--default_permission", "default_permission", default="READ",
              type=click.Choice(["READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS"], case_sensitive=False),
              show_default=True, help="with --auth: what users may do on experiments they were not granted")
@click.option("--auth-cache-ttl", "--auth_cache_ttl", "auth_cache_ttl", type=click.IntRange(min=0), default=60,
              show_default=True, help="with --auth: seconds a checked password stays cached per worker (0: check "
                                      "every request, MLflow's default; each check costs ~0.1 s of CPU)")
@click.option("--check", "check_uri", default="", metavar="URI",
              help="only print a running server's health, version, backend kind and whether auth is on")
@handle_errors
def server(root: str, check_uri: str, **kw: Any) -> None:
    """MLflow tracking server on PostgreSQL with proxied artifacts (and basic-auth with --auth); runs until
    Ctrl-C or SIGTERM, then stops the server and the PostgreSQL cluster it started."""
    from .tracking import server as team

    if check_uri:
        check = team.check_server(check_uri, os.environ.get("MLFLOW_TRACKING_USERNAME"),
                                  os.environ.get("MLFLOW_TRACKING_PASSWORD"))
        click.echo("\n".join(check.lines()))
        sys.exit(0 if check.ok else 1)
    kw["default_permission"] = kw["default_permission"].upper()
    if kw["artifacts_destination"] and "://" not in kw["artifacts_destination"]:
        kw["artifacts_destination"] = str(Path(kw["artifacts_destination"]).expanduser().resolve())
    config = team.ServerConfig(root=Path(root).expanduser().resolve() if root else team.default_root(), **kw)
    if not config.auth and config.host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {config.host} without --auth: anyone reaching port {config.port} can "
                   "read and write every experiment", err=True)
    sys.exit(team.serve(config, announce=lambda text: print(text + "  (Ctrl-C stops it)", flush=True)))


@cli.group(cls=OneLineErrors)
def users() -> None:
    """Users of a team server started with --auth (acting as the admin in MLFLOW_TRACKING_USERNAME/PASSWORD)."""


def _uri_option(fn: Callable) -> Callable:
    return click.option("--uri", default=lambda: os.environ.get("MLFLOW_TRACKING_URI", ""),
                        help="the team server (default: $MLFLOW_TRACKING_URI)")(fn)


@users.command(name="add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="make the new user an admin")
@_uri_option
@handle_errors
def users_add(name: str, admin: bool, uri: str) -> None:
    """Create user NAME; the password comes from $PRUNE_TRACKER_NEW_USER_PASSWORD or a prompt (>= 12 characters)."""
    from .tracking import server as team

    uri = team.check_admin_env(uri)
    password = os.environ.get(NEW_USER_PASSWORD_ENV) or click.prompt(
        f"password for {name}", hide_input=True, confirmation_prompt=True)
    team.add_user(uri, name, password, admin=admin)
    click.echo(f"user {name} created on {uri}{' (admin)' if admin else ''}")


@users.command(name="grant")
@click.argument("name")
@click.argument("experiment")
@click.argument("permission", type=click.Choice(["READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS", "DENY"],
                                                case_sensitive=False))
@_uri_option
@handle_errors
def users_grant(name: str, experiment: str, permission: str, uri: str) -> None:
    """Give user NAME PERMISSION on EXPERIMENT (name or id): READ, USE, EDIT (log runs), MANAGE (also grant),
    NO_PERMISSIONS or DENY."""
    from .tracking import server as team

    uri = team.check_admin_env(uri)
    experiment_id = team.grant(uri, name, experiment, permission.upper())
    click.echo(f"{name}: {permission.upper()} on experiment {experiment!r} (id {experiment_id})")


if __name__ == "__main__":
    cli()
