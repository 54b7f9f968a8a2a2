"""Click parameter types and option groups the commands share, and the builders of the job specs from them.

Every option is spelled `--a-b` and `--a_b` (MLflow passes the underscore form). Bad values end in one line naming
the value and what is allowed (click's own errors too: see `OneLineErrors`), exit 2, no run left RUNNING."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import Any

import click

from prune_tracker.core.data import AUTO, DATASETS
from prune_tracker.core.quant import PRECISIONS, QAT_CHOICES
from prune_tracker.core.training import FINETUNE_SCHEDULES, SCHEDULES, TrainConfig

DEVICES = ("auto", "cpu", "cuda")
QAT_OPTION_CHOICES = QAT_CHOICES


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
    """A byte budget (`core.budget`): bytes with a unit, or a fraction of the base (kept as text: the job resolves
    it against its base model); empty or 0 = none."""

    name = "bytes"

    def convert(self, value: Any, param, ctx) -> int | str | None:
        if value in (None, "", "0", 0):
            return None
        from prune_tracker.core.budget import check_budget, fraction, parse_budget

        try:
            check_budget(str(value), param.name if param else "budget")
            return str(value) if fraction(str(value)) is not None else parse_budget(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


class Width(click.ParamType):
    """A width multiplier: a finite number > 0 (`models.width`)."""

    name = "width"

    def convert(self, value: Any, param, ctx) -> float:
        from prune_tracker.core.models.width import validate_width

        try:
            return validate_width(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


class Seeds(click.ParamType):
    """A comma-separated list of seeds (`0,1,2`); empty = the one `--seed`."""

    name = "seeds"

    def convert(self, value: Any, param, ctx) -> list[int]:
        from prune_tracker.core.seeds import parse_seeds

        if isinstance(value, list):
            return value
        try:
            return parse_seeds(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)



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



def split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def handle_errors(fn: Callable) -> Callable:
    """Bad input and failures end with one line on stderr, exit code 2, and no run left RUNNING."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from prune_tracker.studies.pipeline import PipelineError
        from prune_tracker.tracking import TrackingError, fail_launched_run

        try:
            return fn(*args, **kwargs)
        except (ValueError, TrackingError, FileNotFoundError, PipelineError) as err:
            fail_launched_run()
            message = err.message if isinstance(err, TrackingError) else str(err)
            click.echo(f"Error: {message.strip().splitlines()[0] if message.strip() else type(err).__name__}",
                       err=True)
            sys.exit(2)

    return wrapper


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


def run_entrypoint(command: click.Command) -> None:
    """Run a command as an MLproject entry point: a usage error (bad type, missing value) also fails the
    run that `mlflow run` created, instead of leaving it RUNNING."""
    from prune_tracker.tracking import fail_launched_run

    try:
        command.main(standalone_mode=False)
    except click.ClickException as err:
        fail_launched_run()
        click.echo(f"Error: {err.format_message()}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        fail_launched_run()
        sys.exit(130)


def option(name: str, **kwargs: Any) -> Callable:
    """A click option spelled `--a-b` and `--a_b` (MLflow passes the underscore form), stored as `a_b`."""
    spellings = dict.fromkeys((f"--{name.replace('_', '-')}", f"--{name}"))
    kwargs.setdefault("show_default", "default" in kwargs)
    return click.option(*spellings, name, **kwargs)


def bool_option(name: str, default: bool, help: str) -> Callable:  # noqa: A002 - click's keyword
    """A boolean option that takes a value (`--name true|false`, as MLflow passes it) or stands alone (true)."""
    return option(name, type=click.BOOL, default=default, is_flag=False, flag_value=True, help=help)


def trust_pickle_option(fn: Callable) -> Callable:
    """`--trust-pickle` (MLproject: `-P trust_pickle=true`) on a command that loads models: the command runs with
    unpickling allowed (tracking.trusting_pickle), for itself and the processes it starts. Without it, the team's
    PRUNE_TRACKER_TRUST_PICKLE decides; a foreign (pickled) model is refused in one line naming the opt-in."""

    @functools.wraps(fn)
    def wrapper(*args: Any, trust_pickle: bool, **kwargs: Any) -> Any:
        from prune_tracker.tracking import trusting_pickle

        with trusting_pickle(trust_pickle):
            return fn(*args, **kwargs)

    return bool_option("trust_pickle", default=False,
                       help="allow unpickling a model logged by another tool (runs its code: only for a source you "
                            "trust); or PRUNE_TRACKER_TRUST_PICKLE=1 for a whole team")(wrapper)


def stack(*decorators: Callable) -> Callable:
    """Apply option decorators in the order listed (the first is the first option of `--help`)."""

    def decorate(fn: Callable) -> Callable:
        for one in reversed(decorators):
            fn = one(fn)
        return fn

    return decorate


FRACTION = FiniteFloat(low=0, high=1, high_open=True)
SEED = click.IntRange(min=0)


def data_options(inherit: bool = False, train_subset_default: int = 0, val_size_default: int | str = AUTO
                 ) -> Callable:
    """Data and run options. With `inherit` (commands that load a model), the split options default to the
    parent run's values (None here) and `--new-split` allows a different split explicitly."""
    default = (lambda value: None) if inherit else (lambda value: value)
    parent = " (default: the parent run's)" if inherit else ""
    options = [
        option("dataset", type=EmptyIsNone(click.Choice(DATASETS)), default=default("cifar10"),
               show_default=not inherit, help=f"dataset{parent}"),
        option("data_dir", default="", help="torchvision CIFAR root, ImageFolder tree or .tar/.tar.gz of one"),
        option("train_subset", type=EmptyIsNone(click.IntRange(min=0)), default=default(train_subset_default),
               show_default=not inherit, help="class-balanced training subset size, drawn after the validation "
                                              f"split is carved; 0 = all{parent}"),
        option("val_size", type=ValSize(), default=default(val_size_default), show_default=not inherit,
               help=f"validation images carved from the training set; auto = 5,000 for CIFAR, 10% of a smaller "
                    f"set{parent}"),
        option("split_seed", type=EmptyIsNone(SEED), default=default(0), show_default=not inherit,
               help=f"seed of the train/validation split{parent}"),
        *([bool_option("new_split", default=False, help="allow split options that differ from the parent run's")]
          if inherit else []),
        option("device", type=click.Choice(DEVICES), default="auto"),
        option("experiment_name", default="prune-tracker"),
        option("run_name", default=None),
        click.option("--progress/--no-progress", default=True, help="tqdm progress bars"),
        option("precisions", default=",".join(PRECISIONS),
               help="deployment precisions measured on every model (fp16, int8, int4; ort_int8 on request: ONNX "
                    "Runtime int8, its accuracy, file and one-thread latency; '' = none)"),
    ]
    return stack(*options)


def seed_option(what: str) -> Callable:
    return option("seed", type=SEED, default=0, help=f"seed of {what} (the split has --split-seed)")


zero_init_option = bool_option("zero_init_residual", default=False,
                               help="ResNets: start every residual block as the identity (last BN weight zeroed)")


def train_options(epochs_default: float | None, lr_default: float, schedule_default: str = "onecycle",
                  resize_default: str = "") -> Callable:
    """Training recipe options; `epochs_default=None` leaves out `--epochs` (prune names its budget
    `--finetune-epochs`)."""
    return stack(
        *([option("epochs", type=FiniteFloat(low=0), default=epochs_default)] if epochs_default is not None else []),
        option("batch_size", type=click.IntRange(min=1), default=128),
        option("lr", type=FiniteFloat(low=0), default=lr_default, help="peak learning rate"),
        option("weight_decay", type=FiniteFloat(low=0), default=5e-4),
        option("momentum", type=FRACTION, default=0.9),
        option("schedule", type=click.Choice(SCHEDULES), default=schedule_default),
        option("warmup_fraction", type=FRACTION, default=0.25),
        option("label_smoothing", type=FRACTION, default=0.1),
        option("ema_decay", type=FRACTION, default=0.0, help="EMA of weights; 0 = off"),
        click.option("--tta-flip/--no-tta-flip", "--tta_flip/--no_tta_flip", "tta_flip", default=True,
                     show_default=True, help="average logits with the mirrored image at evaluation"),
        option("resize_schedule", default=resize_default,
               help="progressive resizing, e.g. '16:0.4,24:0.3' (size px: fraction of training)"),
        bool_option("bn_weight_decay", default=True,
                    help="weight decay on BatchNorm and bias parameters too; false exempts them"),
    )


model_uri_option = option("model_uri", required=True,
                          help="runs:/<id>/model (or model_int8 / model_int4), models:/<name>@<alias>, a logged model "
                               "id, or a local .pt file")
arch_option = option("arch", default="", help="architecture of a plain state_dict file or a model logged elsewhere")
input_shape_option = option("input_shape", default="",
                            help="one input image's shape, e.g. 3,32,32, for a model whose MLflow signature has none "
                                 "(default: the signature's, else the dataset's images)")
qat_option = option("qat", type=click.Choice(QAT_CHOICES), default="none",
                    help="quantisation-aware fine-tuning at this precision (fake-quantised weights, straight-through)")


def recovery_options(schedule_default: str = "cosine") -> Callable:
    """The recovery-recipe options of prune, finetune and main (see `jobs.specs.Recovery`)."""
    schedules = (*FINETUNE_SCHEDULES, "") if not schedule_default else FINETUNE_SCHEDULES
    return stack(
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
    )


def parse_extra_options(args: list[str], option_pairs: tuple[str, ...] = ()) -> dict[str, str]:
    """`--key value` / `--key=value` pairs that MLflow appends for undeclared `-P key=value`, and `--option
    name=value` pairs."""
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
    for pair in option_pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise ValueError(f"--option {pair!r} must look like name=value")
        options[key] = value
    return options


# ---------------------------------------------------------------- building specs from the parsed options


def recovery_spec(kw: dict[str, Any], fallback_schedule: str = "cosine"):
    from prune_tracker.jobs.specs import Recovery

    return Recovery(kw.pop("finetune_schedule") or fallback_schedule, kw.pop("rewind_fraction"),
                    kw.pop("distill_alpha"), kw.pop("distill_temperature"), kw.pop("teacher_uri") or None,
                    kw.pop("rounds"), kw.pop("round_epochs"))


def data_spec(kw: dict[str, Any]):
    from prune_tracker.jobs.specs import DataSpec

    return DataSpec(kw.pop("dataset"), kw.pop("data_dir") or None, kw.pop("train_subset"), kw.pop("val_size"),
                    kw.pop("split_seed"), kw.pop("new_split", False))


def run_spec(kw: dict[str, Any]):
    from prune_tracker.jobs.specs import RunSpec

    return RunSpec(kw.pop("experiment_name"), kw.pop("device"), kw.pop("progress"), kw.pop("run_name"),
                   precisions=tuple(split_list(kw.pop("precisions"))))


def train_config(kw: dict[str, Any], **fields: Any) -> TrainConfig:
    """The TrainConfig fields among the options (popped), with `fields` on top."""
    names = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{**{k: kw.pop(k) for k in list(kw) if k in names}, **fields})


def print_run(stage: str, run_id: str) -> None:
    from prune_tracker.tracking import ui_hint

    click.echo(f"{stage} run {run_id} finished")
    click.echo(ui_hint(run_id))
