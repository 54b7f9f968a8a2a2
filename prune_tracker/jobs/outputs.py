"""What every run that produces a model logs: accuracy on each split, the footprint, every deployment precision, the
model itself (pickle flavour + spec + state_dict) and its deployable int8 / int4 variants."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from prune_tracker import tracking
from prune_tracker.core.evaluation import sparsity_figure
from prune_tracker.core.flows import DEFAULT_INPUT, Measurement, evaluate_splits, precision_metrics
from prune_tracker.core.footprint import footprint_figure, measure_footprint
from prune_tracker.core.models import architecture_spec
from prune_tracker.core.models.foreign import is_foreign_arch
from prune_tracker.core.pruning import global_sparsity, sparsity_report
from prune_tracker.core.quant import QUANT_FILE_NAME, artifact_dir_name, save_quantized


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


def log_precisions(model: nn.Module, measurement: Measurement, footprint: dict[str, float]) -> dict[str, float]:
    """`core.flows.precision_metrics`, logged."""
    metrics = precision_metrics(model, measurement, footprint)
    tracking.log_metrics(metrics)
    return metrics


def param_counts(footprint: dict[str, float]) -> dict[str, float]:
    """The parameter counts the footprint measured (params_reduction only when it had a parent)."""
    return {k: footprint[k] for k in ("params_total", "params_nonzero", "params_reduction") if k in footprint}


def sparsity_outputs(model: nn.Module) -> dict[str, float]:
    """Per-layer sparsity as metrics `sparsity.<layer>`, `sparsity.json` and a bar chart."""
    report = sparsity_report(model)
    tracking.log_metrics({f"sparsity.{name}": value for name, value in report.items()})
    tracking.log_dict(report, "sparsity.json")
    tracking.log_figure(sparsity_figure(report), "sparsity.png")
    return report


def finish_model(model: nn.Module, arch: str, num_classes: int, final_metrics: dict[str, float],
                 extra_spec: dict[str, Any] | None = None, precisions: Sequence[str] = (),
                 input_shape: tuple[int, ...] = DEFAULT_INPUT, code_paths: list[str] | None = None) -> str:
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


def log_trained_outputs(model: nn.Module, measurement: Measurement, arch: str, reference: nn.Module | None = None,
                        extra_spec: dict[str, Any] | None = None, code_paths: list[str] | None = None
                        ) -> dict[str, float]:
    """Everything a model-producing run ends with: accuracy on each split, sparsity (of a pruned model, beside
    `reference`, the model its reductions are stated against), footprint, every precision, the model."""
    splits = measurement.splits
    final = evaluate_splits(model, splits, measurement.device, measurement.tta)
    if reference is not None:
        final["sparsity_global"] = global_sparsity(model)
    tracking.log_metrics(final)
    if reference is not None:
        sparsity_outputs(model)
    footprint = log_footprint(model, parent_model=reference, input_shape=measurement.input_shape)
    final.update(param_counts(footprint))
    final.update(log_precisions(model, measurement, footprint))
    finish_model(model, arch, splits.num_classes, final, extra_spec, measurement.precisions,
                 measurement.input_shape, code_paths)
    return final
