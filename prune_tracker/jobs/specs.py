"""Job specs: what a job is asked to do, as frozen dataclasses that validate themselves once, on construction.

The CLI, the MLproject scripts, `sweep`, `search`, `main` and the benchmarks all build these; a job function takes
one spec and nothing else. Two seeds, each with one meaning (the only place seeds are defined):

* ``seed`` (:attr:`TrainConfig.seed <prune_tracker.core.training.TrainConfig>`): the randomness of training,
  pruning and fine-tuning (initialisation, data order, augmentation, calibration draws, dropout of ties);
* ``split_seed`` (:attr:`DataSpec.split_seed`): which training images become the validation split.

A job that starts from a logged model (prune, finetune, evaluate) inherits the split of the run that logged it:
``dataset``, ``val_size`` and ``split_seed`` left ``None`` take the parent's values, and an explicit different
value is refused unless ``new_split`` (the parent's training images could land in this run's validation split);
``train_subset`` may differ (the validation split is carved before the subset is drawn).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.budget import check_budget
from ..core.data import AUTO, DataSplits, load_splits
from ..core.flows import TARGET_ALIASES
from ..core.models import build_model
from ..core.models.foreign import parse_input_shape
from ..core.pruning import get_method, validate_ratio
from ..core.quant import PRECISIONS, validate_precisions, validate_qat
from ..core.training import TrainConfig

CHECKED_SPLIT_FIELDS = ("dataset", "val_size", "split_seed")  # an explicit value must equal the parent's
INHERITED_FIELDS = ("dataset", "train_subset", "val_size", "split_seed")  # None: the parent's value
SPLIT_DEFAULTS: dict[str, Any] = {"dataset": "cifar10", "train_subset": 0, "val_size": AUTO, "split_seed": 0}


def _as_int(name: str, value: Any) -> int:
    """An integer field read from the CLI or from a run's params (MLflow stores text: "0", "0.0")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be an integer >= 0") from None
    if not number.is_integer() or number < 0:
        raise ValueError(f"{name}={value!r} must be an integer >= 0")
    return int(number)


def split_value(name: str, raw: Any) -> Any:
    """A split field as the job uses it: dataset text, val_size `auto` or an int, other fields ints."""
    if raw is None or name == "dataset":
        return raw
    if name == "val_size" and str(raw).strip().lower() == AUTO:
        return AUTO
    return _as_int(name, raw)


def parent_split(params: Mapping[str, str]) -> dict[str, Any]:
    """The split fields a parent run logged (empty values: not logged). Runs logged before `split_seed` existed
    used `seed` for both the split and training: their `seed` is their split seed."""
    found = {k: params.get(k) for k in INHERITED_FIELDS}
    if found["split_seed"] in (None, "") and "split_seed" not in params:
        found["split_seed"] = params.get("seed")
    return {k: split_value(k, v) for k, v in found.items() if v not in (None, "")}


@dataclass(frozen=True)
class DataSpec:
    """Which images a run sees. For a job with a parent run, a field left None takes the parent's value."""

    dataset: str | None = "cifar10"
    data_dir: str | None = None
    train_subset: int | None = 0
    val_size: int | str | None = AUTO
    split_seed: int | None = 0
    new_split: bool = False

    def __post_init__(self) -> None:
        for name in ("train_subset", "val_size", "split_seed"):
            object.__setattr__(self, name, split_value(name, getattr(self, name)))

    @classmethod
    def inherited(cls, data_dir: str | None = None, **explicit: Any) -> DataSpec:
        """Every split field left to the parent run (or given explicitly)."""
        return cls(**{**dict.fromkeys(INHERITED_FIELDS), "data_dir": data_dir, **explicit})

    def inherit(self, parent_params: Mapping[str, str]) -> DataSpec:
        """Fields left None take the parent run's values (else the defaults); an explicit value of a checked field
        that differs from the parent's is an error unless `new_split`."""
        parent = parent_split(parent_params)
        resolved: dict[str, Any] = {}
        for name in INHERITED_FIELDS:
            mine, theirs = getattr(self, name), parent.get(name)
            if mine is None:
                resolved[name] = SPLIT_DEFAULTS[name] if theirs is None else theirs
                continue
            if name in CHECKED_SPLIT_FIELDS and theirs is not None and mine != theirs and not self.new_split:
                raise ValueError(
                    f"{name}={mine!r} differs from the parent run's {name}={theirs!r}: the parent's training images "
                    f"could land in this run's validation split; omit {name}, or pass new_split=true")
            resolved[name] = mine
        data_dir = self.data_dir or parent_params.get("data_dir") or None
        if data_dir and not self.data_dir and not Path(data_dir).expanduser().exists():
            data_dir = None  # the parent's copy is not on this machine: the dataset's default source
        return replace(self, data_dir=data_dir, **resolved)

    def load(self, num_classes: int | None = None) -> DataSplits:
        return load_splits(self.dataset or SPLIT_DEFAULTS["dataset"], self.data_dir or None, self.train_subset or 0,
                           AUTO if self.val_size is None else self.val_size, self.split_seed or 0,
                           num_classes=num_classes)

    def logged(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "new_split"}


@dataclass(frozen=True)
class RunSpec:
    """Where and how a job's run is tracked."""

    experiment_name: str = "prune-tracker"
    device: str = "auto"
    progress: bool = True
    run_name: str | None = None
    extra_tags: Mapping[str, str] = field(default_factory=dict)
    nested: bool = False  # a step of the `main` pipeline
    precisions: tuple[str, ...] = PRECISIONS  # deployment precisions measured on every model a run logs
    resume_run_id: str | None = None  # continue this run (a sweep's trial run, created SCHEDULED beforehand)

    def __post_init__(self) -> None:
        object.__setattr__(self, "precisions", validate_precisions(self.precisions))
        object.__setattr__(self, "extra_tags", dict(self.extra_tags))  # a copy: the caller's dict cannot change it


@dataclass(frozen=True)
class Recovery:
    """How a pruned model recovers (the recovery-recipe options of prune, finetune and main): `finetune_schedule`
    cosine | rewind (learning-rate rewinding to the parent's train schedule, from `rewind_fraction` of it; None = its
    last finetune_epochs epochs) | constant; distillation from `teacher_uri` (default: the model being pruned) with
    `distill_alpha` (0 = off) at `distill_temperature`; `rounds` of prune -> `round_epochs` of retraining (None:
    the method's own, i.e. han's options, else one shot). The one place recovery recipes are defined."""

    finetune_schedule: str = "cosine"
    rewind_fraction: float | None = None
    distill_alpha: float = 0.0
    distill_temperature: float = 4.0
    teacher_uri: str | None = None
    rounds: int | None = None
    round_epochs: float | None = None

    def __post_init__(self) -> None:
        if self.rounds is not None and self.rounds < 1:
            raise ValueError(f"rounds={self.rounds} must be an integer >= 1")
        if self.round_epochs is not None and not (math.isfinite(self.round_epochs) and self.round_epochs >= 0):
            raise ValueError(f"round_epochs={self.round_epochs} must be a finite number >= 0")
        if self.rewind_fraction is not None and not 0 <= self.rewind_fraction < 1:
            raise ValueError(f"rewind_fraction={self.rewind_fraction} must be in [0, 1)")
        if not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"distill_alpha={self.distill_alpha} must be in [0, 1]")

    def logged(self) -> dict[str, Any]:
        return {k: ("" if v is None else v) for k, v in asdict(self).items()}


def _check_epochs(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}={value} must be a finite number >= 0")


@dataclass(frozen=True)
class TrainSpec:
    """Train `arch` from scratch (or resume `resume_run_id`'s checkpoint). `train.seed`: training randomness;
    `data.split_seed`: the validation split."""

    arch: str = "resnet20"
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunSpec = field(default_factory=RunSpec)
    resume_run_id: str | None = None

    def __post_init__(self) -> None:
        self.train.validate()
        build_model(self.arch, zero_init=self.train.zero_init_residual, width=self.train.width)  # unknown arch: now


@dataclass(frozen=True)
class EvaluateSpec:
    model_uri: str
    data: DataSpec = field(default_factory=DataSpec.inherited)
    run: RunSpec = field(default_factory=RunSpec)
    arch: str | None = None
    input_shape: tuple[int, ...] | None = None
    tta_flip: bool = True
    batch_size: int = 500

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", parse_input_shape(self.input_shape))
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")


@dataclass(frozen=True)
class PruneSpec:
    """Prune `model_uri` with `method` at `ratio` (or the smallest ratio whose `target_metric` is at most
    `target_bytes`), then fine-tune for `finetune_epochs` with `train` (its seed: pruning and fine-tuning) and
    `recovery`, with quantisation-aware training when `qat` names a precision."""

    model_uri: str
    method: str = "global_l1"
    ratio: float = 0.5
    options: Mapping[str, Any] = field(default_factory=dict)
    finetune_epochs: float = 0.0
    target_bytes: int | str | None = None  # bytes, or a fraction ("1/10") of the parent's dense fp32 weights
    target_metric: str = "footprint_best_bytes"
    qat: str = "none"
    arch: str | None = None
    input_shape: tuple[int, ...] | None = None
    data: DataSpec = field(default_factory=DataSpec.inherited)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=0.01, schedule="cosine"))
    recovery: Recovery = field(default_factory=Recovery)
    run: RunSpec = field(default_factory=RunSpec)

    def __post_init__(self) -> None:
        method = get_method(self.method)
        object.__setattr__(self, "options", method.resolve_options(dict(self.options)))  # resolved, a copy
        object.__setattr__(self, "ratio", validate_ratio(self.ratio))
        object.__setattr__(self, "qat", validate_qat(self.qat))
        object.__setattr__(self, "target_metric", TARGET_ALIASES.get(self.target_metric, self.target_metric))
        object.__setattr__(self, "input_shape", parse_input_shape(self.input_shape))
        _check_epochs("finetune_epochs", self.finetune_epochs)
        if self.target_bytes is not None:
            check_budget(self.target_bytes, "target_bytes")
        replace(self.train, epochs=self.finetune_epochs).validate()
        if (self.recovery.rounds or 1) > 1 and self.options.get("scope") in ("stage", "all"):
            raise ValueError(f"rounds={self.recovery.rounds} with scope={self.options['scope']} is not supported: "
                             "prune the stages in one shot (rounds=1) or use scope=block")


@dataclass(frozen=True)
class FinetuneSpec:
    """Continue training `model_uri` (masks or pruned architecture kept) for `train.epochs` with `train` (its seed:
    fine-tuning) and `recovery` (rounds do not apply: they interleave pruning and retraining)."""

    model_uri: str
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, lr=0.01, schedule="cosine"))
    recovery: Recovery = field(default_factory=Recovery)
    data: DataSpec = field(default_factory=DataSpec.inherited)
    run: RunSpec = field(default_factory=RunSpec)
    qat: str = "none"
    arch: str | None = None
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "qat", validate_qat(self.qat))
        object.__setattr__(self, "input_shape", parse_input_shape(self.input_shape))
        if self.recovery.rounds is not None or self.recovery.round_epochs is not None:
            raise ValueError("rounds / round_epochs belong to prune (they interleave pruning and retraining)")
        self.train.validate()
