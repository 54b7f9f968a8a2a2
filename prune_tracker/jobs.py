"""What each entry point does: glue between data, models, training, pruning, footprint and tracking.
The click CLI and the MLproject entry points only parse arguments and call these functions."""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import torch
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix, top_k_accuracy_score
from torch import nn
from torch.nn.utils import prune as torch_prune

from . import tracking
from .data import BatchLoader, DataSplits, load_splits
from .footprint import footprint_figure, measure_footprint
from .models import build_from_spec, build_model
from .pruning import (
    PruneContext,
    get_method,
    global_sparsity,
    make_permanent,
    prunable_layers,
    sparsity_report,
    validate_ratio,
)
from .training import (
    TrainConfig,
    Trainer,
    accuracy_and_loss,
    evaluate,
    finetune_fn,
    fit,
    predict_logits,
    resolve_device,
    seed_everything,
)


@dataclass
class DataOptions:
    dataset: str = "cifar10"
    data_dir: str | None = None
    train_subset: int = 0
    val_size: int = 5000
    seed: int = 0

    def load(self, num_classes: int | None = None) -> DataSplits:
        return load_splits(
            self.dataset,
            self.data_dir or None,
            self.train_subset,
            self.val_size,
            self.seed,
            num_classes=num_classes,
        )


@dataclass
class RunOptions:
    experiment_name: str = "prune-tracker"
    device: str = "auto"
    progress: bool = True
    run_name: str | None = None
    extra_tags: dict[str, str] = field(default_factory=dict)
    nested: bool = False  # a step of the `main` pipeline

    def start(self, stage: str, tags: dict[str, Any], resume_run_id: str | None = None):
        return tracking.tracked_run(stage, self.experiment_name, self.run_name,
                                    _lineage_tags({**tags, **self.extra_tags}), nested=self.nested,
                                    resume_run_id=resume_run_id)


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


def log_footprint(model: nn.Module, parent_model: nn.Module | None = None) -> dict[str, float]:
    """Measure and log the footprint metrics, `footprint.json` and the stacked bar chart."""
    parent = measure_footprint(parent_model).metrics if parent_model is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        fp = measure_footprint(model, parent=parent, write_files_to=Path(tmp))
    tracking.log_metrics(fp.metrics)
    mlflow.log_dict(fp.breakdown, "footprint.json")
    figure = footprint_figure(fp)
    mlflow.log_figure(figure, "footprint.png")
    plt.close(figure)
    return fp.metrics


def _finish_model(
    model: nn.Module,
    arch: str,
    num_classes: int,
    final_metrics: dict[str, float],
    extra_spec: dict[str, Any] | None = None,
) -> str:
    model_id = tracking.log_model(model, arch, num_classes, extra_spec)
    tracking.log_metrics(final_metrics, model_id=model_id)
    return model_id


# ---------------------------------------------------------------- train


def train(
    arch: str, data: DataOptions, config: TrainConfig, run: RunOptions, resume_run_id: str | None = None
) -> str:
    """Train `arch` from scratch (or resume a run's checkpoint); returns the run id."""
    config.validate()
    device = resolve_device(run.device)
    splits = data.load()
    seed_everything(config.seed)
    model = build_model(arch, splits.num_classes, zero_init=config.zero_init_residual)
    checkpoint = tracking.load_checkpoint(resume_run_id) if resume_run_id else None
    if resume_run_id and checkpoint is None:
        raise ValueError(
            f"resume_run_id={resume_run_id!r}: that run has no checkpoint/last.pt to resume from"
        )
    trainer = Trainer(model, splits, config, device, progress=run.progress)
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
    tags = _lineage_tags(
        {
            "method": "none",
            "dataset": data.dataset,
            "arch": arch,
            "resumed_from_run_id": resume_run_id,
            **run.extra_tags,
        }
    )
    with run.start("train", tags, resume_run_id) as active:
        tracking.log_params(
            {
                "arch": arch,
                **asdict(data),
                **asdict(config),
                "device": str(device),
                "amp_dtype": str(trainer.amp_dtype),
                "data_source": splits.source,
                "train_size": len(splits.train),
                "num_classes": splits.num_classes,
            }
        )
        tracking.log_dataset(splits, f"{data.dataset}-train")

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            tracking.log_metrics(metrics, step=epoch)
            tracking.log_checkpoint(trainer.state_dict())

        started = time.perf_counter()
        fit(trainer, on_epoch_end)
        final = _evaluate_splits(trainer.eval_model, splits, device, config.tta_flip)
        final["train_seconds"] = time.perf_counter() - started
        tracking.log_metrics(final)
        final.update(_param_counts(log_footprint(trainer.eval_model)))
        _finish_model(trainer.eval_model, arch, splits.num_classes, final)
        return active.info.run_id


# ---------------------------------------------------------------- evaluate


def _latency_ms(model: nn.Module, batch_size: int, repeats: int = 5) -> float:
    model = model.cpu().eval()
    x = torch.randn(batch_size, 3, 32, 32)
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times)) / batch_size


def evaluate_model(
    model_uri: str,
    data: DataOptions,
    run: RunOptions,
    arch: str | None = None,
    tta_flip: bool = True,
    batch_size: int = 500,
) -> str:
    """Top-1/top-5/loss/per-class accuracy, confusion matrix and CPU latency, logged to a new run."""
    device = resolve_device(run.device)
    loaded, splits = _load_with_data(model_uri, data, arch)
    model = loaded.model.to(device)
    tags = _lineage_tags(
        {
            "parent_run_id": loaded.source_run_id,
            "source_model_uri": model_uri,
            "dataset": data.dataset,
            "arch": loaded.spec["arch"],
            **_inherited_method(loaded),
        }
    )
    with run.start("evaluate", tags) as active:
        tracking.log_params(
            {"model_uri": model_uri, **asdict(data), "tta_flip": tta_flip, "device": str(device)}
        )
        loader = BatchLoader(splits.test, batch_size, splits.mean, splits.std, device=device)
        logits, labels = predict_logits(model, loader, tta_flip)
        accuracy, loss = accuracy_and_loss(logits, labels)
        probs = torch.softmax(logits, 1).numpy()
        k = min(5, splits.num_classes - 1)
        metrics = {
            "test_accuracy": accuracy,
            "test_loss": loss,
            "test_top5_accuracy": top_k_accuracy_score(
                labels.numpy(), probs, k=k, labels=list(range(splits.num_classes))
            ),
            "latency_ms_per_image_batch1": _latency_ms(model, 1),
            "latency_ms_per_image_batch128": _latency_ms(model, 128),
        }
        matrix = confusion_matrix(
            labels.numpy(), logits.argmax(1).numpy(), labels=list(range(splits.num_classes))
        )
        per_class = matrix.diagonal() / np.maximum(matrix.sum(1), 1)
        metrics.update(
            {f"class_accuracy.{i}": float(a) for i, a in enumerate(per_class)}
            if splits.num_classes <= 20
            else {}
        )
        tracking.log_metrics(metrics)
        mlflow.log_dict(
            {
                "classes": splits.classes,
                "per_class_accuracy": per_class.tolist(),
                "confusion_matrix": matrix.tolist(),
            },
            "evaluation.json",
        )
        fig, ax = plt.subplots(figsize=(8, 7))
        ConfusionMatrixDisplay(
            matrix, display_labels=splits.classes if splits.num_classes <= 20 else None
        ).plot(ax=ax, include_values=splits.num_classes <= 20, xticks_rotation=45, colorbar=False)
        mlflow.log_figure(fig, "confusion_matrix.png")
        plt.close(fig)
        log_footprint(model)
        return active.info.run_id


def _load_with_data(model_uri: str, data: DataOptions, arch: str | None = None
                    ) -> tuple[tracking.LoadedModel, DataSplits]:
    """The model behind `model_uri` and the data it must be evaluated on (same class count)."""
    loaded = tracking.load_model(model_uri, arch)
    splits = data.load(num_classes=loaded.spec["num_classes"])
    _check_classes(loaded.spec, splits)
    return loaded, splits


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
    mlflow.log_dict(report, "sparsity.json")
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(report)), 4))
    ax.bar(range(len(report)), list(report.values()), color="tab:blue")
    ax.set_xticks(range(len(report)), list(report), rotation=90, fontsize=7)
    ax.set_ylabel("zero fraction")
    ax.set_ylim(0, 1)
    ax.set_title("per-layer sparsity")
    fig.tight_layout()
    mlflow.log_figure(fig, "sparsity.png")
    plt.close(fig)
    return report


def _param_counts(footprint: dict[str, float]) -> dict[str, float]:
    """The parameter counts the footprint measured (params_reduction only when it had a parent)."""
    return {k: footprint[k] for k in ("params_total", "params_nonzero", "params_reduction") if k in footprint}


def _prune_context(
    splits: DataSplits, config: TrainConfig, device: torch.device, progress: bool, tta: bool
) -> PruneContext:
    def calibration_batches():
        return BatchLoader(splits.train, 256, splits.mean, splits.std, device=device, channels_last=False)

    def evaluate_val(model: nn.Module) -> float:
        images = splits.val if len(splits.val) else splits.train
        return evaluate(model, images, splits, device, tta_flip=tta)[0]

    return PruneContext(
        example_input=torch.zeros(1, 3, 32, 32, device=device),
        calibration_batches=calibration_batches,
        evaluate=evaluate_val,
        finetune=finetune_fn(splits, config, device, progress),
        device=device,
        log=lambda msg: print(f"[prune] {msg}", flush=True),
    )


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
) -> str:
    """Prune a logged model with a registered method, optionally fine-tune, measure and log everything."""
    method = get_method(method_name)
    ratio = validate_ratio(ratio)
    options = method.resolve_options(options or {})
    if not (math.isfinite(finetune_epochs) and finetune_epochs >= 0):
        raise ValueError(f"finetune_epochs={finetune_epochs} must be a finite number >= 0")
    config.validate()
    device = resolve_device(run.device)
    loaded, splits = _load_with_data(model_uri, data)
    arch = loaded.spec["arch"]
    parent = loaded.model
    model = _copy_model(loaded).to(device)
    seed_everything(config.seed)
    tags = _lineage_tags(
        {
            "method": method.name,
            "parent_run_id": loaded.source_run_id,
            "dataset": data.dataset,
            "arch": arch,
            "pruning_kind": "structured" if method.structured else "unstructured",
            "source_model_uri": model_uri,
            **run.extra_tags,
        }
    )
    ctx = _prune_context(splits, config, device, run.progress, tta_flip)
    with run.start("prune", tags) as active:
        if target_bytes is not None:
            ratio = search_ratio_for_target(model, method, target_bytes, target_metric)
            tracking.log_metrics({"target_bytes": target_bytes, "ratio_searched": ratio})
        tracking.log_params(
            {
                "model_uri": model_uri,
                "method": method.name,
                "ratio": ratio,
                **asdict(data),
                **{f"finetune_{k}": v for k, v in asdict(config).items()},
                "finetune_epochs": finetune_epochs,
                "tta_flip": tta_flip,
                "device": str(device),
                **{f"option.{k}": v for k, v in options.items()},
            }
        )
        mlflow.set_tag("ratio", str(ratio))
        result = method.prune(model, ratio, ctx, **options)
        tracking.log_metrics(
            {"prune_seconds": result.seconds, "method_finetune_epochs": result.finetuned_epochs}
        )
        if result.details:
            mlflow.log_dict(result.details, "pruning_details.json")
        for name, figure in (result.figures or {}).items():
            mlflow.log_figure(figure, f"{name}.png")
            plt.close(figure)
        pruned = result.model
        metrics = _evaluate_splits(pruned, splits, device, tta_flip, suffix="_pruned")
        tracking.log_metrics(metrics)
        ctx.finetune(pruned, finetune_epochs)
        make_permanent(pruned)
        return _log_pruned_outputs(
            pruned,
            parent,
            splits,
            device,
            tta_flip,
            arch,
            active.info.run_id,
            {"method": method.name, "ratio": ratio, "structured": method.structured},
        )


def _copy_model(loaded: tracking.LoadedModel) -> nn.Module:
    model = build_from_spec(loaded.spec)
    model.load_state_dict(loaded.model.state_dict())
    return model


def _log_pruned_outputs(
    model: nn.Module,
    parent: nn.Module,
    splits: DataSplits,
    device: torch.device,
    tta: bool,
    arch: str,
    run_id: str,
    pruning_spec: dict[str, Any],
) -> str:
    final = _evaluate_splits(model, splits, device, tta)
    final["sparsity_global"] = global_sparsity(model)
    tracking.log_metrics(final)
    _sparsity_outputs(model)
    final.update(_param_counts(log_footprint(model, parent_model=parent)))
    _finish_model(model, arch, splits.num_classes, final, {"pruning": pruning_spec})
    return run_id


def search_ratio_for_target(
    model: nn.Module, method, target_bytes: int, metric: str, tolerance: float = 0.005
) -> float:
    """Bisect the ratio at which the model's `metric` footprint falls to `target_bytes`. Each probe prunes
    a copy with the data-free proxy of the method's kind (global L1 magnitude for unstructured methods,
    uniform L1 filters for structured ones): footprints depend on how much is removed, not on which weights."""
    proxy = get_method("li_filters" if method.structured else "global_l1")
    proxy_options = {"per_layer": "uniform"} if method.structured and "per_layer" in proxy.params else {}

    def footprint_at(ratio: float) -> float:
        probe = proxy.prune(_clone(model), ratio, _NO_DATA_CONTEXT, **proxy_options).model
        make_permanent(probe)
        value = measure_footprint(probe).metrics
        if metric not in value:
            raise ValueError(f"target metric {metric!r} unknown; choose one of: {', '.join(sorted(value))}")
        return value[metric]

    if footprint_at(0.0) <= target_bytes:
        return 0.0
    low, high = 0.0, 0.99
    if footprint_at(high) > target_bytes:
        raise ValueError(
            f"target_bytes={target_bytes} is below what {method.name} reaches at ratio 0.99 "
            f"({footprint_at(high):.0f} bytes of {metric})"
        )
    while high - low > tolerance:
        middle = (low + high) / 2
        low, high = (middle, high) if footprint_at(middle) > target_bytes else (low, middle)
    return round(high, 4)


def _clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu()


def _no_data(*_args, **_kwargs):
    raise RuntimeError("the footprint search's proxy pruning must not need data")


_NO_DATA_CONTEXT = PruneContext(
    example_input=torch.zeros(1, 3, 32, 32),
    calibration_batches=_no_data,
    evaluate=_no_data,
    finetune=lambda *a, **k: None,
    log=lambda _msg: None,
)


def reattach_masks(model: nn.Module) -> int:
    """Re-create torch.nn.utils.prune masks from the zeros of an unstructured-pruned model, so fine-tuning
    keeps pruned weights at exactly zero. Returns the number of masked layers."""
    masked = 0
    for _, module in prunable_layers(model, keep_first=False, keep_last=False):
        if not torch.all(module.weight != 0):
            torch_prune.custom_from_mask(module, "weight", (module.weight != 0).to(module.weight.dtype))
            masked += 1
    return masked


def finetune_model(
    model_uri: str,
    epochs: float,
    data: DataOptions,
    config: TrainConfig,
    run: RunOptions,
    tta_flip: bool = True,
) -> str:
    """Continue training a pruned model with its masks (zeros) or architecture kept."""
    config.validate()
    device = resolve_device(run.device)
    loaded, splits = _load_with_data(model_uri, data)
    arch = loaded.spec["arch"]
    model = _copy_model(loaded)
    masked_layers = reattach_masks(model)
    inherited = _inherited_method(loaded)
    tags = _lineage_tags(
        {
            "parent_run_id": loaded.source_run_id,
            "dataset": data.dataset,
            "arch": arch,
            "source_model_uri": model_uri,
            "method": inherited.get("method", "none"),
            **{k: v for k, v in inherited.items() if k != "method"},
            **run.extra_tags,
        }
    )
    seed_everything(config.seed)
    trainer = Trainer(model, splits, replace_epochs(config, epochs), device, progress=run.progress)
    with run.start("finetune", tags) as active:
        tracking.log_params(
            {
                "model_uri": model_uri,
                **asdict(data),
                **asdict(trainer.config),
                "tta_flip": tta_flip,
                "device": str(device),
                "masked_layers": masked_layers,
                "ratio": inherited.get("ratio", ""),
            }
        )
        fit(trainer, lambda epoch, metrics: tracking.log_metrics(metrics, step=epoch))
        trained = trainer.eval_model
        make_permanent(trained)
        # Reductions of a fine-tuned model are stated against the unpruned architecture, not the pruned parent.
        unpruned = build_model(arch, splits.num_classes)
        return _log_pruned_outputs(
            trained,
            unpruned,
            splits,
            device,
            tta_flip,
            arch,
            active.info.run_id,
            loaded.spec.get("pruning", {}),
        )


def replace_epochs(config: TrainConfig, epochs: float) -> TrainConfig:
    return replace(config, epochs=epochs)
