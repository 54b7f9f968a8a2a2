"""The numeric steps a job composes, without MLflow: accuracy on each split, the context a pruning method works in,
one-shot or iterative pruning, the ratio that reaches a footprint target, and every precision's accuracy and bytes.

The jobs (`prune_tracker.jobs`) call these and log what they return; library-level benchmarks (a lent GPU box has
no MLflow) call the same functions, so a benchmark row is computed by the code a `prune` run uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .data import BatchLoader, DataSplits
from .footprint import measure_footprint, micronet_score
from .pruning import PruneContext, PruneResult, make_permanent
from .pruning.iterative import RoundPlan, iterative_prune
from .pruning.target import footprint_probe, search_ratio
from .quant import byte_metrics, int8_activation_bytes, measure_precisions, model_bytes, qat_finetune
from .quant.weights import BITS
from .training import TrainConfig, evaluate, finetune_fn

DEFAULT_INPUT = (3, 32, 32)  # one CIFAR image: what a model is measured with unless it declares another shape
# The fp16 point's bytes: `footprint_best_bytes` (BatchNorm unfolded, best storage format) is the one name.
TARGET_ALIASES = {"footprint_best_fp16_bytes": "footprint_best_bytes"}


def image_shape(splits: DataSplits) -> tuple[int, ...]:
    return tuple(int(d) for d in splits.test.images.shape[1:])


@dataclass(frozen=True)
class Measurement:
    """How a run measures the models it produces: on `splits`, on `device`, with flip test-time augmentation or
    not, at each deployment precision in `precisions`, with one input image of `input_shape` for the footprint."""

    splits: DataSplits
    device: torch.device
    tta: bool = True
    precisions: tuple[str, ...] = ()
    input_shape: tuple[int, ...] = DEFAULT_INPUT


def evaluate_splits(model: nn.Module, splits: DataSplits, device: torch.device, tta: bool,
                    suffix: str = "") -> dict[str, float]:
    """`val_accuracy`, `val_loss`, `test_accuracy`, `test_loss` (with `suffix`) on the splits that have images."""
    metrics = {}
    for name, images in (("val", splits.val), ("test", splits.test)):
        if len(images):
            acc, loss = evaluate(model, images, splits, device, tta_flip=tta)
            metrics[f"{name}_accuracy{suffix}"], metrics[f"{name}_loss{suffix}"] = acc, loss
    return metrics


CALIBRATION_IMAGES = 512  # activation scales (w8a8, ONNX Runtime int8) are fitted on this many training images


def training_batches(splits: DataSplits, device: torch.device, batch_size: int = 256,
                     limit: int | None = None) -> BatchLoader:
    """Batches of training images (the first `limit` of them): what calibration may read; validation and test stay
    unseen by anything fitted, since they rank and report the result."""
    images = splits.train if limit is None else splits.train.subset(torch.arange(min(limit, len(splits.train))))
    return BatchLoader(images, batch_size, splits.mean, splits.std, device=device, channels_last=False)


def prune_context(splits: DataSplits, config: TrainConfig, device: torch.device, progress: bool, tta: bool,
                  teacher: nn.Module | None = None, input_shape: tuple[int, ...] | None = None) -> PruneContext:
    """What a pruning method may use: training batches for calibration, validation accuracy, fine-tuning with
    `config` (distilling from `teacher`); the example input has the model's `input_shape` (default: the data's)."""

    def evaluate_val(model: nn.Module) -> float:
        images = splits.val if len(splits.val) else splits.train
        return evaluate(model, images, splits, device, tta_flip=tta)[0]

    return PruneContext(
        example_input=torch.zeros(1, *(input_shape or image_shape(splits)), device=device),
        calibration_batches=lambda: training_batches(splits, device),  # the method decides how many it reads
        evaluate=evaluate_val,
        finetune=finetune_fn(splits, config, device, progress, teacher=teacher),
        device=device,
        log=lambda msg: print(f"[prune] {msg}", flush=True),
    )


def prune_in_rounds(method, model: nn.Module, ratio: float, ctx: PruneContext, options: dict[str, Any],
                    rounds: int | None = None, round_epochs: float | None = None,
                    on_round: Callable[[int, dict[str, float]], None] | None = None) -> PruneResult:
    """One shot, or `rounds` of prune -> retrain (`round_epochs` each), `on_round(k, metrics)` after each round
    (`round_sparsity`, `round_val_accuracy`). `han` prunes in rounds with its own options unless `rounds` says."""
    own_rounds = getattr(method, "prunes_in_rounds", False)
    rounds = rounds if rounds is not None else (options.get("rounds", 1) if own_rounds else 1)
    if rounds <= 1 and not own_rounds:
        return method.prune(model, ratio, ctx, **options)
    round_epochs = round_epochs if round_epochs is not None else options.get("round_epochs", 1.0)
    return iterative_prune(method, model, ratio, ctx, RoundPlan(rounds, round_epochs, on_round or (lambda k, m: None),
                                                             finetune_last=not own_rounds), options)


@dataclass(frozen=True)
class PrunePlan:
    """How a model is pruned and recovered: `method` at `ratio` with its `options`, in `rounds` of prune ->
    `round_epochs` of retraining (None: one shot, or the method's own rounds), then `finetune_epochs` of fine-tuning
    (quantisation-aware at `qat` unless "none")."""

    method: Any
    ratio: float
    options: dict[str, Any]
    finetune_epochs: float = 0.0
    qat: str = "none"
    rounds: int | None = None
    round_epochs: float | None = None


def prune_and_recover(model: nn.Module, plan: PrunePlan, ctx: PruneContext, measurement: Measurement,
                      on_round: Callable[[int, dict[str, float]], None] | None = None
                      ) -> tuple[PruneResult, dict[str, float]]:
    """Prune (`prune_in_rounds`), measure the model right after pruning (`*_pruned` metrics), fine-tune it in place
    with `ctx.finetune` (QAT when the plan says), bake the masks in. Returns the method's result (its `model` is the
    recovered model) and the after-pruning metrics."""
    result = prune_in_rounds(plan.method, model, plan.ratio, ctx, plan.options, plan.rounds, plan.round_epochs,
                             on_round)
    after_pruning = evaluate_splits(result.model, measurement.splits, measurement.device, measurement.tta,
                                    suffix="_pruned")
    qat_finetune(ctx.finetune, plan.qat)(result.model, plan.finetune_epochs)
    make_permanent(result.model)
    return result, after_pruning


def footprint_metric(metrics: dict[str, float], name: str) -> float:
    if name not in metrics:
        raise ValueError(f"target_metric={name!r} is not a footprint metric; choose one of: "
                         f"{', '.join(sorted(k for k in metrics if k.endswith('_bytes')))}, "
                         "footprint[_bitmask|_csr|_best]_int8|int4_bytes, total_w8a8_bytes")
    return metrics[name]


def target_measure(target_metric: str, input_shape: tuple[int, ...] = DEFAULT_INPUT) -> Callable[[nn.Module], float]:
    """`model -> bytes` for a footprint metric: the footprint's own (fp32 / fp16 formats, activations, totals),
    a quantised one (`footprint[_bitmask|_csr|_best]_int8|int4_bytes`, BN folded as deployed), or
    `total_w8a8_bytes` (int8 weights in their best format + the int8 activation peak)."""
    target_metric = TARGET_ALIASES.get(target_metric, target_metric)
    quantised = re.fullmatch(r"footprint_(?:(?:bitmask|csr|best)_)?(int8|int4)_bytes", target_metric)
    if quantised:
        precision = quantised.group(1)
        return lambda m: byte_metrics(model_bytes(m, precision), precision)[target_metric]
    if target_metric == "total_w8a8_bytes":
        return lambda m: (byte_metrics(model_bytes(m, "int8"), "int8")["footprint_best_int8_bytes"]
                          + int8_activation_bytes(measure_footprint(m, input_shape).metrics[
                              "activation_peak_fp32_bytes"]))
    return lambda m: footprint_metric(measure_footprint(m, input_shape).metrics, target_metric)


def ratio_for_target(model: nn.Module, method, options: dict[str, Any], ctx: PruneContext, target_bytes: int,
                     target_metric: str) -> float:
    """The smallest ratio at which `method` itself brings `target_metric` to at most `target_bytes`."""
    measure = target_measure(target_metric, tuple(ctx.example_input.shape[1:]))
    measure(model)  # an unknown metric fails at once
    return search_ratio(footprint_probe(model, method, options, ctx, measure), target_bytes, label=method.name)


def precision_metrics(model: nn.Module, measurement: Measurement, footprint: dict[str, float]) -> dict[str, float]:
    """Accuracy and bytes at each deployment precision (weights fake-quantised after BatchNorm folding) as
    `<metric>_<precision>`, `micronet_score_<precision>`; w8a8 activation scales are calibrated on the first
    CALIBRATION_IMAGES training images (never validation or test, which rank and report the result)."""
    splits, device, precisions, input_shape = (measurement.splits, measurement.device, measurement.precisions,
                                               measurement.input_shape)
    if not precisions:
        return {}

    def accuracies(quantised: nn.Module) -> dict[str, float]:
        measured = evaluate_splits(quantised.to(device), splits, device, measurement.tta)
        return {k: v for k, v in measured.items() if k.endswith("_accuracy")}

    metrics = measure_precisions(model, precisions, accuracies,
                                 lambda: training_batches(splits, device, limit=CALIBRATION_IMAGES),
                                 footprint["activation_peak_fp32_bytes"])
    for precision in precisions:
        metrics[f"micronet_score_{precision}"] = micronet_score(model, BITS[precision], input_shape, mult_bits=16)
    if "int8" in precisions:
        metrics["micronet_score_w8a8"] = micronet_score(model, 8, input_shape, mult_bits=8)
    return metrics
