"""`prune`: a logged model pruned with a registered method (one shot or in rounds), fine-tuned with a recovery
recipe (and quantisation-aware training), measured at every precision and logged."""

from __future__ import annotations

from dataclasses import asdict, replace

from torch import nn

from prune_tracker import tracking
from prune_tracker.core.budget import parse_budget
from prune_tracker.core.flows import (
    Measurement,
    PrunePlan,
    prune_and_recover,
    prune_context,
    ratio_for_target,
    target_measure,
)
from prune_tracker.core.footprint import measure_footprint
from prune_tracker.core.pruning import get_method
from prune_tracker.core.training import resolve_device, seed_everything
from prune_tracker.jobs.any_cnn import copy_loaded
from prune_tracker.jobs.lineage import check_trainable, load_with_data, origin, recipe_config, seed_params, teacher
from prune_tracker.jobs.outputs import log_trained_outputs
from prune_tracker.jobs.runs import start_run
from prune_tracker.jobs.specs import PruneSpec


def log_target_met(model: nn.Module, target_bytes: int, target_metric: str, input_shape: tuple[int, ...]) -> None:
    """Probes prune in one shot without retraining; rounds, fine-tuning or QAT can move which weights quantise to
    zero, so the final model is measured again: `target_met` 1 or 0 (and a line saying by how much)."""
    measured = target_measure(target_metric, input_shape)(model)
    tracking.log_metrics({"target_met": float(measured <= target_bytes), "target_measured_bytes": measured})
    if measured > target_bytes:
        print(f"[prune] WARNING: the final model's {target_metric} is {measured:.0f} B, over target_bytes="
              f"{target_bytes} by {measured - target_bytes:.0f} B", flush=True)


def prune_model(spec: PruneSpec) -> str:
    """Prune, recover and log (see the module docstring); returns the run id."""
    method, run = get_method(spec.method), spec.run
    device = resolve_device(run.device)
    found = load_with_data(spec.model_uri, spec.data, spec.arch, spec.input_shape)
    loaded, splits = found.model, found.splits
    check_trainable(loaded)
    config = recipe_config(replace(spec.train, epochs=spec.finetune_epochs), spec.recovery, loaded)
    arch, options = loaded.spec["arch"], dict(spec.options)
    model = copy_loaded(loaded).to(device)
    seed_everything(config.seed)
    ctx = prune_context(splits, config, device, run.progress, config.tta_flip,
                        teacher(spec.recovery, loaded, splits, device), loaded.input_shape)
    ratio, target_bytes = spec.ratio, None
    if spec.target_bytes is not None:  # bytes, or a fraction of the parent's dense fp32 weights
        dense = measure_footprint(loaded.model, loaded.input_shape).metrics["footprint_fp32_bytes"]
        target_bytes = parse_budget(spec.target_bytes, dense, "target_bytes")
        ratio = ratio_for_target(model, method, options, ctx, target_bytes, spec.target_metric)
    tags = {"method": method.name, "parent_run_id": loaded.source_run_id, "dataset": splits.dataset, "arch": arch,
            "pruning_kind": "structured" if method.structured else "unstructured",
            "source_model_uri": spec.model_uri, "ratio": ratio, **seed_params(found.data, config)}
    with start_run(run, "prune", tags, f"prune {method.name} {ratio:.3g} <- {origin(loaded)}") as active:
        # The param `ratio` is what was asked; with target_bytes the search's result is the metric `searched_ratio`
        # (the tag `ratio` is the ratio applied either way).
        searched = {"searched_ratio": ratio, "target_bytes": target_bytes} if target_bytes else {}
        tracking.log_metrics(searched or {"ratio": spec.ratio})
        tracking.log_params({
            "model_uri": spec.model_uri, "method": method.name, "ratio": spec.ratio, **found.data.logged(),
            **{f"finetune_{k}": v for k, v in asdict(config).items() if k not in ("width", "seed")},
            "seed": config.seed, "finetune_epochs": spec.finetune_epochs, "target_bytes": spec.target_bytes or "",
            "target_metric": spec.target_metric, "qat": spec.qat, "precisions": ",".join(run.precisions),
            **spec.recovery.logged(), "tta_flip": config.tta_flip, "device": str(device),
            **{f"option.{k}": v for k, v in options.items()},
            **({"scope": options["scope"]} if "scope" in options else {})})
        plan = PrunePlan(method, ratio, options, spec.finetune_epochs, spec.qat, spec.recovery.rounds,
                         spec.recovery.round_epochs)
        measurement = Measurement(splits, device, config.tta_flip, run.precisions, loaded.input_shape)
        result, after_pruning = prune_and_recover(model, plan, ctx, measurement,
                                                  on_round=lambda k, metrics: tracking.log_metrics(metrics, step=k))
        tracking.log_metrics({"prune_seconds": result.seconds, "method_finetune_epochs": result.finetuned_epochs,
                              **after_pruning})
        if result.details:
            tracking.log_dict(result.details, "pruning_details.json")
        for name, figure in (result.figures or {}).items():
            tracking.log_figure(figure, f"{name}.png")
        pruned = result.model
        if target_bytes is not None:
            log_target_met(pruned, target_bytes, spec.target_metric, loaded.input_shape)
        log_trained_outputs(pruned, measurement, arch, reference=loaded.model,
                            extra_spec={"pruning": {"method": method.name, "ratio": ratio,
                                                    "structured": method.structured},
                                        "input_shape": list(loaded.input_shape)},
                            code_paths=loaded.code_paths)
        return active.info.run_id
