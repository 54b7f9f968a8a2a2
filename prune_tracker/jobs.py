"""What each entry point does: glue between data, models, training, pruning, footprint and tracking.
The click CLI and the MLproject entry points only parse arguments and call these functions."""

from __future__ import annotations

import math
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import tracking
from .any_cnn import check_model_on_data, copy_loaded, image_shape, resolve_input_shape, unpruned_reference
from .data import AUTO, BatchLoader, DataSplits, load_splits
from .evaluation import classification_metrics, confusion_figure, latency_ms, sparsity_figure
from .footprint import footprint_figure, measure_footprint, micronet_score
from .models import architecture_spec, build_model
from .models.foreign import is_foreign_arch, parse_input_shape
from .pruning import (
    PruneContext,
    get_method,
    global_sparsity,
    make_permanent,
    reattach_masks,
    sparsity_report,
    validate_ratio,
)
from .pruning.iterative import iterative_prune
from .pruning.target import footprint_probe, search_ratio
from .quant import (
    PRECISIONS,
    QUANT_FILE_NAME,
    artifact_dir_name,
    byte_metrics,
    int8_activation_bytes,
    measure_precisions,
    model_bytes,
    qat_finetune,
    save_quantized,
    validate_precisions,
    validate_qat,
)
from .quant.qat import disable_qat, enable_qat
from .quant.weights import BITS
from .recipes import finetune_recipe
from .training import (
    TrainConfig,
    Trainer,
    evaluate,
    finetune_fn,
    fit,
    predict_logits,
    resolve_device,
    seed_everything,
)

SPLIT_FIELDS = ("dataset", "train_subset", "val_size", "seed")
DEFAULT_INPUT = (3, 32, 32)  # one CIFAR image: what a model is measured with unless it declares another shape
SPLIT_DEFAULTS = {"dataset": "cifar10", "train_subset": 0, "val_size": AUTO, "seed": 0}


@dataclass
class DataOptions:
    """Which images a run sees. For a model with a parent run (prune, finetune, evaluate), a field left None
    takes the parent's value, so the parent's training images never land in the validation split;
    `new_split=True` allows an explicit different split."""

    dataset: str | None = "cifar10"
    data_dir: str | None = None
    train_subset: int | None = 0
    val_size: int | str | None = AUTO
    seed: int | None = 0
    new_split: bool = False

    def load(self, num_classes: int | None = None) -> DataSplits:
        return load_splits(
            self.dataset or SPLIT_DEFAULTS["dataset"],
            self.data_dir or None,
            self.train_subset or 0,
            AUTO if self.val_size is None else self.val_size,
            self.seed or 0,
            num_classes=num_classes,
        )

    def logged(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "new_split"}


@dataclass
class Recovery:
    """How a pruned model recovers (the recovery-recipes options of prune, finetune and main):
    `finetune_schedule` cosine | rewind (learning-rate rewinding to the parent's train schedule, from
    `rewind_fraction` of it; None = its last finetune_epochs epochs) | constant; distillation from `teacher_uri`
    (default: the model being pruned) with `distill_alpha` (0 = off) at `distill_temperature`; `rounds` of
    prune -> `round_epochs` of retraining (None: the method's own, i.e. han's options, else one shot)."""

    finetune_schedule: str = "cosine"
    rewind_fraction: float | None = None
    distill_alpha: float = 0.0
    distill_temperature: float = 4.0
    teacher_uri: str | None = None
    rounds: int | None = None
    round_epochs: float | None = None

    def validate(self) -> None:
        if self.rounds is not None and self.rounds < 1:
            raise ValueError(f"rounds={self.rounds} must be an integer >= 1")
        if self.round_epochs is not None and not (math.isfinite(self.round_epochs) and self.round_epochs >= 0):
            raise ValueError(f"round_epochs={self.round_epochs} must be a finite number >= 0")
        if self.rewind_fraction is not None and not 0 <= self.rewind_fraction < 1:
            raise ValueError(f"rewind_fraction={self.rewind_fraction} must be in [0, 1)")

    def logged(self) -> dict[str, Any]:
        return {k: ("" if v is None else v) for k, v in asdict(self).items()}


def _as_split_value(name: str, raw: str) -> Any:
    if name == "dataset" or (name == "val_size" and raw == AUTO):
        return raw
    try:
        return int(raw)
    except ValueError:
        return raw


def inherit_split(data: DataOptions, parent_params: dict[str, str]) -> DataOptions:
    """Fill the fields left None from the parent run's params (else the defaults); an explicit value that
    differs from the parent's is an error unless `new_split`."""
    resolved: dict[str, Any] = {}
    for name in SPLIT_FIELDS:
        mine, theirs = getattr(data, name), parent_params.get(name)
        parent_value = None if theirs in (None, "") else _as_split_value(name, theirs)
        if mine is None:
            resolved[name] = SPLIT_DEFAULTS[name] if parent_value is None else parent_value
        elif parent_value is not None and mine != parent_value and not data.new_split:
            raise ValueError(
                f"{name}={mine!r} differs from the parent run's {name}={parent_value!r}: the parent's training "
                f"images could land in this run's validation split; omit {name}, or pass new_split=true"
            )
        else:
            resolved[name] = mine
    data_dir = data.data_dir or parent_params.get("data_dir") or None
    if data_dir and not data.data_dir and not Path(data_dir).expanduser().exists():
        data_dir = None  # the parent's copy is not on this machine: fall back to the dataset's default source
    return replace(data, data_dir=data_dir, **resolved)


@dataclass
class RunOptions:
    experiment_name: str = "prune-tracker"
    device: str = "auto"
    progress: bool = True
    run_name: str | None = None
    extra_tags: dict[str, str] = field(default_factory=dict)
    nested: bool = False  # a step of the `main` pipeline
    precisions: tuple[str, ...] = PRECISIONS  # deployment precisions measured on every model a run logs
    resume_run_id: str | None = None  # continue this run (a sweep's trial run, created SCHEDULED beforehand)

    def start(self, stage: str, tags: dict[str, Any], default_name: str, resume_run_id: str | None = None):
        """A tracked run named `run_name` if one was given, else `default_name` (what the run is)."""
        return tracking.tracked_run(stage, self.experiment_name, self.run_name or default_name,
                                    _lineage_tags({**tags, **self.extra_tags}), nested=self.nested,
                                    resume_run_id=resume_run_id or self.resume_run_id)


def _lineage_tags(stage_tags: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in stage_tags.items() if v not in (None, "")}


def _evaluate_splits(
    model: nn.Module, splits: DataSplits, device: torch.device, tta: bool, suffix: str = ""
) -> dict[str, float]:
    metrics = {}
    for name, images in (("val", splits.val), ("test", splits.test)):
        if len(images):
            acc, loss = evaluate(model, images, splits, device, tta_flip=tta)
            metrics[f"{name}_accuracy{suffix}"], metrics[f"{name}_loss{suffix}"] = acc, loss
    return metrics


def log_footprint(model: nn.Module, parent_model: nn.Module | None = None,
                  input_shape: tuple[int, ...] = DEFAULT_INPUT) -> dict[str, float]:
    """Measure and log the footprint metrics, `footprint.json` and the stacked bar chart (activations and FLOPs
    at `input_shape`, one image)."""
    parent = measure_footprint(parent_model, input_shape).metrics if parent_model is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        fp = measure_footprint(model, input_shape, parent=parent, write_files_to=Path(tmp))
    tracking.log_metrics(fp.metrics)
    tracking.log_dict(fp.breakdown, "footprint.json")
    tracking.log_figure(footprint_figure(fp), "footprint.png")
    return fp.metrics


def log_precisions(model: nn.Module, splits: DataSplits, device: torch.device, tta: bool,
                   precisions: tuple[str, ...], footprint: dict[str, float],
                   input_shape: tuple[int, ...] = DEFAULT_INPUT) -> dict[str, float]:
    """Accuracy and bytes at each deployment precision (weights fake-quantised after BatchNorm folding), and
    w8a8 with activation scales calibrated on validation images (training images when there is no validation
    split; never test), logged as `<metric>_<precision>`, `micronet_score_<precision>`."""
    if not precisions:
        return {}

    def accuracies(quantised: nn.Module) -> dict[str, float]:
        measured = _evaluate_splits(quantised.to(device), splits, device, tta)
        return {k: v for k, v in measured.items() if k.endswith("_accuracy")}

    def calibration_batches():
        images = splits.val if len(splits.val) else splits.train
        return BatchLoader(images, 256, splits.mean, splits.std, device=device, channels_last=False)

    metrics = measure_precisions(model, precisions, accuracies, calibration_batches,
                                 footprint["activation_peak_fp32_bytes"])
    if "fp16" in precisions:  # the fp16 point keeps footprint's meaning of the best fp16 format (BN unfolded)
        metrics["footprint_best_fp16_bytes"] = footprint["footprint_best_bytes"]
    for precision in precisions:
        metrics[f"micronet_score_{precision}"] = micronet_score(model, BITS[precision], input_shape, mult_bits=16)
    if "int8" in precisions:
        metrics["micronet_score_w8a8"] = micronet_score(model, 8, input_shape, mult_bits=8)
    tracking.log_metrics(metrics)
    return metrics


def _finish_model(
    model: nn.Module,
    arch: str,
    num_classes: int,
    final_metrics: dict[str, float],
    extra_spec: dict[str, Any] | None = None,
    precisions: tuple[str, ...] = (),
    input_shape: tuple[int, ...] = DEFAULT_INPUT,
    code_paths: list[str] | None = None,
) -> str:
    """Log the model (and its deployable int8 / int4 variants) with the run's final metrics attached. A foreign
    model gets no deployable files: they are rebuilt from a spec, which only its own code could do."""
    model_id = tracking.log_model(model, arch, num_classes, extra_spec, input_shape, code_paths)
    tracking.log_metrics(final_metrics, model_id=model_id)
    for precision in [p for p in precisions if p in ("int8", "int4") and not is_foreign_arch(arch)]:
        _log_quantised_variant(model, arch, num_classes, extra_spec, precision, final_metrics)
    return model_id


def _log_quantised_variant(model: nn.Module, arch: str, num_classes: int, extra_spec: dict[str, Any] | None,
                           precision: str, final_metrics: dict[str, float]) -> None:
    spec = {**architecture_spec(model.cpu(), arch, num_classes), **(extra_spec or {})}
    name = artifact_dir_name(precision)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        folder.mkdir()
        save_quantized(model, spec, precision, folder / QUANT_FILE_NAME)
        file_bytes = (folder / QUANT_FILE_NAME).stat().st_size
        tracking.log_metrics({f"file_best_{precision}_bytes": file_bytes})
        keys = (f"test_accuracy_{precision}", f"val_accuracy_{precision}", f"footprint_best_{precision}_bytes")
        attached = {k: final_metrics[k] for k in keys if k in final_metrics}
        tracking.log_files_model(folder, name, {"precision": precision, "arch": arch},
                                 {**attached, f"file_best_{precision}_bytes": file_bytes})


# ---------------------------------------------------------------- train


def train(
    arch: str, data: DataOptions, config: TrainConfig, run: RunOptions, resume_run_id: str | None = None
) -> str:
    """Train `arch` from scratch (or resume a run's checkpoint); returns the run id."""
    config = replace(config, seed=config.seed if data.seed is None else data.seed)  # one seed: split + training
    config.validate()
    run = replace(run, precisions=validate_precisions(run.precisions))
    device = resolve_device(run.device)
    splits = data.load()
    seed_everything(config.seed)
    model = build_model(arch, splits.num_classes, zero_init=config.zero_init_residual, width=config.width)
    check_model_on_data(model, splits, f"arch={arch}")  # e.g. a torchvision builder that needs larger images
    checkpoint = tracking.load_checkpoint(resume_run_id) if resume_run_id else None
    if resume_run_id and checkpoint is None:
        raise ValueError(
            f"resume_run_id={resume_run_id!r}: that run has no checkpoint/last.pt to resume from"
        )
    trainer = Trainer(model, splits, config, device, progress=run.progress)
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
    tags = {"method": "none", "dataset": splits.dataset, "arch": arch, "resumed_from_run_id": resume_run_id,
            "width": None if config.width == 1 else f"{config.width:g}"}
    name = f"train {arch}{'' if config.width == 1 else f' w{config.width:g}'} {splits.dataset} {config.epochs:g}ep"
    with run.start("train", tags, name, resume_run_id) as active:
        tracking.log_params(
            {
                "arch": arch,
                **data.logged(),
                **asdict(config),
                "device": str(device),
                "amp_dtype": str(trainer.amp_dtype),
                "data_source": splits.source,
                "train_size": len(splits.train),
                "val_images": len(splits.val),
                "num_classes": splits.num_classes,
                "precisions": ",".join(run.precisions),
            }
        )
        tracking.log_dataset(splits, f"{splits.dataset}-train")

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            tracking.log_metrics(metrics, step=epoch)
            tracking.log_checkpoint(trainer.state_dict())

        started = time.perf_counter()
        fit(trainer, on_epoch_end)
        final = _evaluate_splits(trainer.eval_model, splits, device, config.tta_flip)
        final["train_seconds"] = time.perf_counter() - started
        tracking.log_metrics(final)
        footprint = log_footprint(trainer.eval_model)
        final.update(_param_counts(footprint))
        final.update(log_precisions(trainer.eval_model, splits, device, config.tta_flip, run.precisions, footprint))
        _finish_model(trainer.eval_model, arch, splits.num_classes, final, precisions=run.precisions)
        return active.info.run_id


# ---------------------------------------------------------------- evaluate


def evaluate_model(
    model_uri: str,
    data: DataOptions,
    run: RunOptions,
    arch: str | None = None,
    tta_flip: bool = True,
    batch_size: int = 500,
    input_shape: str | tuple[int, ...] | None = None,
) -> str:
    """Top-1/top-5/loss/per-class accuracy, confusion matrix and CPU latency, logged to a new run."""
    run = replace(run, precisions=validate_precisions(run.precisions))
    device = resolve_device(run.device)
    loaded, data, splits = _load_with_data(model_uri, data, arch, input_shape)
    shape = loaded.input_shape
    model = loaded.model.to(device)
    tags = {
        "parent_run_id": loaded.source_run_id,
        "source_model_uri": model_uri,
        "dataset": splits.dataset,
        "arch": loaded.spec["arch"],
        **_inherited_method(loaded),
    }
    with run.start("evaluate", tags, f"evaluate {loaded.spec['arch']} <- {_origin(loaded)}") as active:
        tracking.log_params(
            {"model_uri": model_uri, **data.logged(), "tta_flip": tta_flip, "device": str(device),
             "precisions": ",".join(run.precisions)}
        )
        loader = BatchLoader(splits.test, batch_size, splits.mean, splits.std, device=device)
        result = classification_metrics(*predict_logits(model, loader, tta_flip), splits.classes)
        result.metrics["latency_ms_per_image_batch1"] = latency_ms(model, 1, shape)
        result.metrics["latency_ms_per_image_batch128"] = latency_ms(model, 128, shape)
        tracking.log_metrics(result.metrics)
        tracking.log_dict(result.summary(), "evaluation.json")
        tracking.log_figure(confusion_figure(result), "confusion_matrix.png")
        footprint = log_footprint(model, input_shape=shape)
        log_precisions(model, splits, device, tta_flip, run.precisions, footprint, shape)
        return active.info.run_id


def _origin(loaded: tracking.LoadedModel) -> str:
    return tracking.short_id(loaded.source_run_id) or Path(loaded.uri).name


def _load_with_data(model_uri: str, data: DataOptions, arch: str | None = None,
                    input_shape: str | tuple[int, ...] | None = None
                    ) -> tuple[tracking.LoadedModel, DataOptions, DataSplits]:
    """The model behind `model_uri`, the data options completed from its parent run, and the data it must be
    evaluated on (same class count, and a forward pass on its images works); `loaded.input_shape` is resolved
    (declared, else `input_shape`, else the dataset's)."""
    loaded = tracking.load_model(model_uri, arch)
    parent_params = tracking.lineage_params(loaded.source_run_id, (*SPLIT_FIELDS, "data_dir")) \
        if loaded.source_run_id else {}
    data = inherit_split(data, parent_params)
    splits = data.load(num_classes=loaded.spec["num_classes"])
    _check_classes(loaded.spec, splits)
    declared = loaded.input_shape or parse_input_shape(input_shape)  # what the model is said to expect, if anything
    loaded.input_shape = resolve_input_shape(loaded, splits, input_shape)
    check_model_on_data(loaded.model, splits, model_uri, declared)
    return loaded, data, splits


def _check_trainable(loaded: tracking.LoadedModel) -> None:
    if loaded.precision != "fp32":
        source = f"runs:/{loaded.source_run_id}/model" if loaded.source_run_id else "the fp32 model"
        raise ValueError(f"{loaded.uri!r} is a deployable {loaded.precision} file (BatchNorm folded, weights "
                         f"quantised): prune or fine-tune {source} instead")


def _check_classes(spec: dict[str, Any], splits: DataSplits) -> None:
    if int(spec["num_classes"]) != splits.num_classes:
        raise ValueError(
            f"the model has {spec['num_classes']} classes but dataset {splits.dataset!r} has "
            f"{splits.num_classes}; pass the dataset it was trained on"
        )


def _inherited_method(loaded: tracking.LoadedModel) -> dict[str, str]:
    if loaded.source_run_id is None:
        return {}
    tags = tracking.run_tags(loaded.source_run_id)
    return {k: tags[k] for k in ("method", "pruning_kind", "ratio") if k in tags}


# ---------------------------------------------------------------- prune / finetune


def _sparsity_outputs(model: nn.Module) -> dict[str, float]:
    """Per-layer sparsity as metrics `sparsity.<layer>`, `sparsity.json` and a bar chart."""
    report = sparsity_report(model)
    tracking.log_metrics({f"sparsity.{name}": value for name, value in report.items()})
    tracking.log_dict(report, "sparsity.json")
    tracking.log_figure(sparsity_figure(report), "sparsity.png")
    return report


def _param_counts(footprint: dict[str, float]) -> dict[str, float]:
    """The parameter counts the footprint measured (params_reduction only when it had a parent)."""
    return {k: footprint[k] for k in ("params_total", "params_nonzero", "params_reduction") if k in footprint}


def prune_context(
    splits: DataSplits, config: TrainConfig, device: torch.device, progress: bool, tta: bool,
    teacher: nn.Module | None = None, input_shape: tuple[int, ...] | None = None,
) -> PruneContext:
    """What a pruning method may use: training batches for calibration, validation accuracy, fine-tuning; the
    example input has the model's `input_shape` (default: the dataset's images)."""
    def calibration_batches():
        return BatchLoader(splits.train, 256, splits.mean, splits.std, device=device, channels_last=False)

    def evaluate_val(model: nn.Module) -> float:
        images = splits.val if len(splits.val) else splits.train
        return evaluate(model, images, splits, device, tta_flip=tta)[0]

    return PruneContext(
        example_input=torch.zeros(1, *(input_shape or image_shape(splits)), device=device),
        calibration_batches=calibration_batches,
        evaluate=evaluate_val,
        finetune=finetune_fn(splits, config, device, progress, teacher=teacher),
        device=device,
        log=lambda msg: print(f"[prune] {msg}", flush=True),
    )


def _train_run_params(run_id: str | None) -> dict[str, str] | None:
    """The params of the run that trained the model from scratch: `run_id` or its nearest `stage=train`
    ancestor through `parent_run_id`; None when there is none in the store."""
    train_run = tracking.ancestor_run(run_id, "train") if run_id else None
    return tracking.run_params(train_run) if train_run else None


def _recipe_config(config: TrainConfig, recovery: Recovery, loaded: tracking.LoadedModel) -> TrainConfig:
    parent_params = None
    if recovery.finetune_schedule == "rewind":
        parent_params = _train_run_params(loaded.source_run_id)
        if parent_params is None:
            raise ValueError(f"finetune_schedule=rewind needs the train run of {loaded.uri!r} (its lr, schedule, "
                             "epochs, warmup_fraction) and the store has none; use finetune_schedule=cosine")
    return finetune_recipe(config, recovery.finetune_schedule, parent_params, recovery.rewind_fraction,
                           recovery.distill_alpha, recovery.distill_temperature)


def _teacher(recovery: Recovery, loaded: tracking.LoadedModel, splits: DataSplits, device: torch.device
             ) -> nn.Module | None:
    """The distillation teacher: `teacher_uri`'s model, or the unpruned model being pruned; None when off."""
    if recovery.distill_alpha == 0:
        return None
    teacher = tracking.load_model(recovery.teacher_uri).model if recovery.teacher_uri else _copy_model(loaded)
    if _num_classes(teacher, splits) != splits.num_classes:
        raise ValueError(f"teacher_uri={recovery.teacher_uri!r} predicts another number of classes than "
                         f"dataset {splits.dataset!r} has ({splits.num_classes})")
    return teacher.to(device).eval()


def _num_classes(model: nn.Module, splits: DataSplits) -> int:
    with torch.no_grad():
        return int(model.cpu().eval()(torch.zeros(1, *splits.test.images.shape[1:])).shape[1])


def _prune_in_rounds(method, model: nn.Module, ratio: float, ctx: PruneContext, options: dict[str, Any],
                     recovery: Recovery):
    """One shot, or `rounds` of prune -> retrain with each round's sparsity and validation accuracy logged as
    step metrics `round_sparsity`, `round_val_accuracy`. `han` prunes in rounds with its own options."""
    own_rounds = getattr(method, "prunes_in_rounds", False)
    rounds = recovery.rounds if recovery.rounds is not None else (options.get("rounds", 1) if own_rounds else 1)
    if rounds <= 1 and not own_rounds:
        return method.prune(model, ratio, ctx, **options)
    round_epochs = recovery.round_epochs if recovery.round_epochs is not None else options.get("round_epochs", 1.0)
    return iterative_prune(method, model, ratio, ctx, rounds, round_epochs, options,
                           on_round=lambda k, metrics: tracking.log_metrics(metrics, step=k),
                           finetune_last=not own_rounds)


def footprint_metric(metrics: dict[str, float], name: str) -> float:
    if name not in metrics:
        raise ValueError(f"target_metric={name!r} is not a footprint metric; choose one of: "
                         f"{', '.join(sorted(k for k in metrics if k.endswith('_bytes')))}, "
                         "footprint[_bitmask|_csr|_best]_int8|int4_bytes, total_w8a8_bytes")
    return metrics[name]


def _target_measure(target_metric: str, input_shape: tuple[int, ...] = DEFAULT_INPUT):
    """`model -> bytes` for a footprint metric: the footprint's own (fp32 / fp16 formats, activations, totals),
    a quantised one (`footprint[_bitmask|_csr|_best]_int8|int4_bytes`, BN folded as deployed), or
    `total_w8a8_bytes` (int8 weights in their best format + the int8 activation peak)."""
    quantised = re.fullmatch(r"footprint_(?:(?:bitmask|csr|best)_)?(int8|int4)_bytes", target_metric)
    if quantised:
        precision = quantised.group(1)
        return lambda m: byte_metrics(model_bytes(m, precision), precision)[target_metric]
    if target_metric == "total_w8a8_bytes":
        return lambda m: (byte_metrics(model_bytes(m, "int8"), "int8")["footprint_best_int8_bytes"]
                          + int8_activation_bytes(measure_footprint(m, input_shape).metrics[
                              "activation_peak_fp32_bytes"]))
    return lambda m: footprint_metric(measure_footprint(m, input_shape).metrics, target_metric)


TARGET_ALIASES = {"footprint_best_fp16_bytes": "footprint_best_bytes"}


def _log_target_met(model: nn.Module, target_bytes: int, target_metric: str,
                    input_shape: tuple[int, ...] = DEFAULT_INPUT) -> None:
    """Probes prune in one shot without retraining; rounds, fine-tuning or QAT can move which weights quantise to
    zero, so the final model is measured again: `target_met` 1 or 0 (and a line saying by how much)."""
    measured = _target_measure(target_metric, input_shape)(model)
    tracking.log_metrics({"target_met": float(measured <= target_bytes), "target_measured_bytes": measured})
    if measured > target_bytes:
        print(f"[prune] WARNING: the final model's {target_metric} is {measured:.0f} B, over target_bytes="
              f"{target_bytes} by {measured - target_bytes:.0f} B", flush=True)


def ratio_for_target(model: nn.Module, method, options: dict[str, Any], ctx: PruneContext, target_bytes: int,
                     target_metric: str) -> float:
    """The smallest ratio at which `method` itself brings `target_metric` to at most `target_bytes`."""
    measure = _target_measure(target_metric, tuple(ctx.example_input.shape[1:]))
    measure(model)  # an unknown metric fails at once
    return search_ratio(footprint_probe(model, method, options, ctx, measure), target_bytes, label=method.name)


def prune_model(
    model_uri: str,
    method_name: str,
    ratio: float,
    data: DataOptions,
    config: TrainConfig,
    run: RunOptions,
    finetune_epochs: float = 0,
    options: dict[str, Any] | None = None,
    target_bytes: int | None = None,
    target_metric: str = "footprint_best_bytes",
    tta_flip: bool = True,
    arch: str | None = None,
    qat: str = "none",
    recovery: Recovery | None = None,
    train_seed: int | None = None,
    input_shape: str | tuple[int, ...] | None = None,
) -> str:
    """Prune a logged model with a registered method (in rounds, with `recovery`), optionally fine-tune (with
    a recovery recipe; with quantisation-aware training when `qat` names a precision), measure every precision
    and log everything. `train_seed` seeds pruning and fine-tuning (logged as `finetune_seed`; a sweep's seeds)
    while the data split keeps `data.seed` (default: both are the split's seed)."""
    method = get_method(method_name)
    qat = validate_qat(qat)
    recovery = recovery or Recovery()
    recovery.validate()
    run = replace(run, precisions=validate_precisions(run.precisions))
    ratio = validate_ratio(ratio)
    options = method.resolve_options(options or {})
    if not (math.isfinite(finetune_epochs) and finetune_epochs >= 0):
        raise ValueError(f"finetune_epochs={finetune_epochs} must be a finite number >= 0")
    config.validate()
    device = resolve_device(run.device)
    if (recovery.rounds or 1) > 1 and options.get("scope") in ("stage", "all"):
        raise ValueError(f"rounds={recovery.rounds} with scope={options['scope']} is not supported: prune the "
                         "stages in one shot (rounds=1) or use scope=block")
    target_metric = TARGET_ALIASES.get(target_metric, target_metric)
    loaded, data, splits = _load_with_data(model_uri, data, arch, input_shape)
    _check_trainable(loaded)
    seed = data.seed if train_seed is None else train_seed
    config = _recipe_config(replace(config, seed=seed, epochs=finetune_epochs), recovery, loaded)
    arch = loaded.spec["arch"]
    parent = loaded.model
    model = _copy_model(loaded).to(device)
    teacher = _teacher(recovery, loaded, splits, device)
    seed_everything(config.seed)
    ctx = prune_context(splits, config, device, run.progress, tta_flip, teacher, loaded.input_shape)
    if target_bytes is not None:
        ratio = ratio_for_target(model, method, options, ctx, target_bytes, target_metric)
    tags = {
        "method": method.name,
        "parent_run_id": loaded.source_run_id,
        "dataset": splits.dataset,
        "arch": arch,
        "pruning_kind": "structured" if method.structured else "unstructured",
        "source_model_uri": model_uri,
        "ratio": ratio,
    }
    with run.start("prune", tags, f"prune {method.name} {ratio:.3g} <- {_origin(loaded)}") as active:
        # The metric `ratio` is the ratio applied (the searched one with target_bytes); under `mlflow run` the
        # param keeps the value the entry point was given.
        tracking.log_metrics({"ratio": ratio, **({"target_bytes": target_bytes} if target_bytes else {})})
        tracking.log_params(
            {
                "model_uri": model_uri,
                "method": method.name,
                "ratio": ratio,
                **data.logged(),
                **{f"finetune_{k}": v for k, v in asdict(config).items() if k != "width"},  # the parent's
                "finetune_epochs": finetune_epochs,
                "target_bytes": target_bytes or "",
                "target_metric": target_metric,
                "qat": qat,
                "precisions": ",".join(run.precisions),
                **recovery.logged(),
                "tta_flip": tta_flip,
                "device": str(device),
                **{f"option.{k}": v for k, v in options.items()},
                **({"scope": options["scope"]} if "scope" in options else {}),
            }
        )
        result = _prune_in_rounds(method, model, ratio, ctx, options, recovery)
        tracking.log_metrics(
            {"prune_seconds": result.seconds, "method_finetune_epochs": result.finetuned_epochs}
        )
        if result.details:
            tracking.log_dict(result.details, "pruning_details.json")
        for name, figure in (result.figures or {}).items():
            tracking.log_figure(figure, f"{name}.png")
        pruned = result.model
        tracking.log_metrics(_evaluate_splits(pruned, splits, device, tta_flip, suffix="_pruned"))
        qat_finetune(ctx.finetune, qat)(pruned, finetune_epochs)
        make_permanent(pruned)
        if target_bytes is not None:
            _log_target_met(pruned, target_bytes, target_metric, loaded.input_shape)
        return _log_pruned_outputs(
            pruned,
            parent,
            splits,
            device,
            tta_flip,
            arch,
            active.info.run_id,
            {"method": method.name, "ratio": ratio, "structured": method.structured},
            run.precisions,
            loaded,
        )


def _copy_model(loaded: tracking.LoadedModel) -> nn.Module:
    return copy_loaded(loaded)


def _log_pruned_outputs(
    model: nn.Module,
    parent: nn.Module,
    splits: DataSplits,
    device: torch.device,
    tta: bool,
    arch: str,
    run_id: str,
    pruning_spec: dict[str, Any],
    precisions: tuple[str, ...],
    loaded: tracking.LoadedModel | None = None,
) -> str:
    shape = loaded.input_shape if loaded and loaded.input_shape else image_shape(splits)
    final = _evaluate_splits(model, splits, device, tta)
    final["sparsity_global"] = global_sparsity(model)
    tracking.log_metrics(final)
    _sparsity_outputs(model)
    footprint = log_footprint(model, parent_model=parent, input_shape=shape)
    final.update(_param_counts(footprint))
    final.update(log_precisions(model, splits, device, tta, precisions, footprint, shape))
    extra = {"pruning": pruning_spec, **({"input_shape": list(shape)} if loaded else {})}
    _finish_model(model, arch, splits.num_classes, final, extra, precisions, shape, loaded and loaded.code_paths)
    return run_id


def finetune_model(
    model_uri: str,
    epochs: float,
    data: DataOptions,
    config: TrainConfig,
    run: RunOptions,
    tta_flip: bool = True,
    arch: str | None = None,
    qat: str = "none",
    recovery: Recovery | None = None,
    input_shape: str | tuple[int, ...] | None = None,
) -> str:
    """Continue training a pruned model with its masks (zeros) or architecture kept; `qat` trains with
    fake-quantised weights (straight-through) so that that precision recovers; `recovery` sets the schedule
    (rewind: the train run of its lineage) and distillation (default teacher: the unpruned model of its
    lineage's train run)."""
    qat = validate_qat(qat)
    recovery = recovery or Recovery(finetune_schedule=config.schedule)
    recovery.validate()
    run = replace(run, precisions=validate_precisions(run.precisions))
    config.validate()
    device = resolve_device(run.device)
    loaded, data, splits = _load_with_data(model_uri, data, arch, input_shape)
    _check_trainable(loaded)
    config = _recipe_config(replace(config, seed=data.seed, epochs=epochs), recovery, loaded)
    if recovery.distill_alpha and not recovery.teacher_uri:
        base = tracking.ancestor_run(loaded.source_run_id, "train") if loaded.source_run_id else None
        if base is None:
            raise ValueError(f"distill_alpha needs a teacher: {model_uri!r} has no train run in its lineage; "
                             "pass teacher_uri")
        recovery = replace(recovery, teacher_uri=f"runs:/{base}/model")
    teacher = _teacher(recovery, loaded, splits, device)
    arch = loaded.spec["arch"]
    model = _copy_model(loaded)
    masked_layers = reattach_masks(model)
    if qat != "none":
        enable_qat(model, qat)  # before the Trainer builds its optimizer over the parametrized weights
    inherited = _inherited_method(loaded)
    tags = {
        "parent_run_id": loaded.source_run_id,
        "dataset": splits.dataset,
        "arch": arch,
        "source_model_uri": model_uri,
        "method": inherited.get("method", "none"),
        **{k: v for k, v in inherited.items() if k != "method"},
    }
    seed_everything(config.seed)
    trainer = Trainer(model, splits, config, device, progress=run.progress, teacher=teacher)
    name = f"finetune {inherited.get('method', arch)} {epochs:g}ep <- {_origin(loaded)}"
    with run.start("finetune", tags, name) as active:
        tracking.log_params(
            {
                "model_uri": model_uri,
                **data.logged(),
                **{k: v for k, v in asdict(trainer.config).items() if k != "width"},  # width: the parent's spec
                "tta_flip": tta_flip,
                "device": str(device),
                "masked_layers": masked_layers,
                "ratio": inherited.get("ratio", ""),
                "qat": qat,
                "precisions": ",".join(run.precisions),
                **recovery.logged(),
            }
        )
        fit(trainer, lambda epoch, metrics: tracking.log_metrics(metrics, step=epoch))
        trained = trainer.eval_model
        if qat != "none":
            disable_qat(trained)
        make_permanent(trained)
        if "ratio" in inherited:
            tracking.log_metrics({"ratio": float(inherited["ratio"])})
        # Reductions of a fine-tuned model are stated against the unpruned architecture, not the pruned parent.
        unpruned = unpruned_reference(loaded, splits.num_classes)  # foreign: the model it was fine-tuned from
        return _log_pruned_outputs(
            trained,
            unpruned,
            splits,
            device,
            tta_flip,
            arch,
            active.info.run_id,
            loaded.spec.get("pruning", {}),
            run.precisions,
            loaded,
        )
