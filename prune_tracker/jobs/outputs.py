"""What every run that produces a model logs: accuracy on each split, the footprint, every deployment precision, the
model itself (pickle flavour + spec + state_dict) and its deployable int8 / int4 variants, and with ort_int8 the
ONNX Runtime int8 model (`model_ort_int8`)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from prune_tracker import tracking
from prune_tracker.core.deploy import ORT_ARTIFACT, ORT_INT8
from prune_tracker.core.evaluation import sparsity_figure
from prune_tracker.core.flows import DEFAULT_INPUT, Measurement, deployment_metrics, evaluate_splits, precision_metrics
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


def check_deployable(model: nn.Module, precisions: Sequence[str], input_shape: tuple[int, ...], label: str) -> None:
    """Before a run starts: with ort_int8 among `precisions`, an ExportError (one line naming `label`) unless the
    model exports to ONNX, so that no run is left half-logged by a model ONNX Runtime cannot take."""
    if ORT_INT8 not in precisions:
        return
    from prune_tracker.core.deploy.export import ExportError, check_exportable  # onnx: imported only when asked

    try:
        check_exportable(model, input_shape, label)
    except ExportError as err:
        raise ExportError(f"{err}; precisions={ORT_INT8} needs a model ONNX can export: leave {ORT_INT8} out") from None


def log_deployment(model: nn.Module, measurement: Measurement, folder: Path, label: str) -> dict[str, float]:
    """`core.flows.deployment_metrics` (ort_int8), logged; the quantised file is left in `folder`. {} without
    ort_int8."""
    deployment = deployment_metrics(model, measurement, folder, label)
    if deployment is None:
        return {}
    tracking.log_metrics(deployment.metrics)
    return deployment.metrics


def _log_ort_model(folder: Path, arch: str, num_classes: int, input_shape: tuple[int, ...],
                   final_metrics: dict[str, float]) -> None:
    """The ONNX Runtime int8 file `log_deployment` left in `folder`, logged as `model_ort_int8` with its figures."""
    from prune_tracker.core.deploy.measure import INT8_FILE
    from prune_tracker.tracking.onnx_models import log_onnx_model  # onnx: imported only when measured

    keys = (f"val_accuracy_{ORT_INT8}", f"test_accuracy_{ORT_INT8}", f"file_{ORT_INT8}_bytes",
            f"latency_ms_{ORT_INT8}", f"latency_ms_{ORT_INT8}_batch128")
    attached = {k: final_metrics[k] for k in keys if k in final_metrics}
    log_onnx_model(folder / INT8_FILE, ORT_ARTIFACT, arch, num_classes, input_shape, attached)


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
    with tempfile.TemporaryDirectory() as tmp:
        final.update(log_deployment(model, measurement, Path(tmp), f"arch={arch}"))
        finish_model(model, arch, splits.num_classes, final, extra_spec, measurement.precisions,
                     measurement.input_shape, code_paths)
        if ORT_INT8 in measurement.precisions:
            _log_ort_model(Path(tmp), arch, splits.num_classes, measurement.input_shape, final)
    return final
