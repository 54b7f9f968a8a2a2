"""`evaluate`: top-1 / top-5 / loss / per-class accuracy, the confusion matrix, CPU latency, the footprint and every
deployment precision of a logged model, on the split it inherits from its lineage. An ONNX Runtime model
(`model_ort_int8`) is run by ONNX Runtime: its accuracy (also as `test_accuracy_ort_int8`), file bytes and one-thread
latency; its footprint and weight precisions belong to its run's `model`."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prune_tracker import tracking
from prune_tracker.core.data import BatchLoader
from prune_tracker.core.deploy import ORT_INT8
from prune_tracker.core.evaluation import classification_metrics, confusion_figure, latency_ms
from prune_tracker.core.flows import Measurement
from prune_tracker.core.training import predict_logits, resolve_device
from prune_tracker.jobs.lineage import inherited_method, load_with_data, origin
from prune_tracker.jobs.outputs import check_deployable, log_deployment, log_footprint, log_precisions
from prune_tracker.jobs.runs import start_run
from prune_tracker.jobs.specs import EvaluateSpec


def _ort_figures(model, test_accuracy: float, shape: tuple[int, ...]) -> dict[str, float]:
    """An ONNX Runtime model's own figures: its accuracy under the precision's name, its file, its latency."""
    from prune_tracker.core.deploy.latency import latency_metrics, ort_call  # onnxruntime: only for ORT models

    return {f"test_accuracy_{ORT_INT8}": test_accuracy, f"file_{ORT_INT8}_bytes": float(model.file_bytes),
            **latency_metrics(ORT_INT8, ort_call(model.session), shape)}


def evaluate_model(spec: EvaluateSpec) -> str:
    """Evaluate `spec.model_uri`, logged to a new run; returns its id."""
    run = spec.run
    device = resolve_device(run.device)
    found = load_with_data(spec.model_uri, spec.data, spec.arch, spec.input_shape)
    loaded, splits, shape = found.model, found.splits, found.model.input_shape
    runtime = loaded.precision == ORT_INT8  # an ONNX Runtime model: the precisions are measured on its run's model
    if not runtime:
        check_deployable(loaded.model, run.precisions, shape, f"model_uri={spec.model_uri!r}")
    model = loaded.model.to(device)
    tags = {"parent_run_id": loaded.source_run_id, "source_model_uri": spec.model_uri, "dataset": splits.dataset,
            "arch": loaded.spec["arch"], "split_seed": found.data.split_seed, **inherited_method(loaded)}
    with start_run(run, "evaluate", tags, f"evaluate {loaded.spec['arch']} <- {origin(loaded)}") as active:
        tracking.log_params({"model_uri": spec.model_uri, **found.data.logged(), "tta_flip": spec.tta_flip,
                             "device": str(device), "precisions": ",".join(run.precisions)})
        loader = BatchLoader(splits.test, spec.batch_size, splits.mean, splits.std, device=device)
        result = classification_metrics(*predict_logits(model, loader, spec.tta_flip), splits.classes)
        result.metrics["latency_ms_per_image_batch1"] = latency_ms(model, 1, shape)
        result.metrics["latency_ms_per_image_batch128"] = latency_ms(model, 128, shape)
        if runtime:
            result.metrics |= _ort_figures(loaded.model, result.metrics["test_accuracy"], shape)
        tracking.log_metrics(result.metrics)
        tracking.log_dict(result.summary(), "evaluation.json")
        tracking.log_figure(confusion_figure(result), "confusion_matrix.png")
        if runtime:
            return active.info.run_id
        footprint = log_footprint(model, input_shape=shape)
        measurement = Measurement(splits, device, spec.tta_flip, run.precisions, shape)
        log_precisions(model, measurement, footprint)
        with tempfile.TemporaryDirectory() as tmp:
            log_deployment(model, measurement, Path(tmp), f"model_uri={spec.model_uri!r}")
        return active.info.run_id
