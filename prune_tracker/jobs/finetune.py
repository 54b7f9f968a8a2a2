"""`finetune`: more training of a (pruned) logged model with its masks or pruned architecture kept, a recovery
recipe (schedule, distillation from its lineage's unpruned model) and optional quantisation-aware training."""

from __future__ import annotations

from dataclasses import asdict, replace

from prune_tracker import tracking
from prune_tracker.core.flows import Measurement
from prune_tracker.core.pruning import make_permanent, reattach_masks
from prune_tracker.core.quant.qat import disable_qat, enable_qat
from prune_tracker.core.training import Trainer, fit, resolve_device, seed_everything
from prune_tracker.jobs.any_cnn import copy_loaded, unpruned_reference
from prune_tracker.jobs.lineage import (
    check_trainable,
    inherited_method,
    load_with_data,
    origin,
    recipe_config,
    seed_params,
    teacher,
)
from prune_tracker.jobs.outputs import check_deployable, log_trained_outputs
from prune_tracker.jobs.runs import start_run
from prune_tracker.jobs.specs import FinetuneSpec


def finetune_model(spec: FinetuneSpec) -> str:
    """Fine-tune `spec.model_uri` for `spec.train.epochs`; returns the run id."""
    run, recovery = spec.run, spec.recovery
    device = resolve_device(run.device)
    found = load_with_data(spec.model_uri, spec.data, spec.arch, spec.input_shape)
    loaded, splits = found.model, found.splits
    check_trainable(loaded)
    check_deployable(loaded.model, run.precisions, loaded.input_shape, f"model_uri={spec.model_uri!r}")
    config = recipe_config(spec.train, recovery, loaded)
    if recovery.distill_alpha and not recovery.teacher_uri:
        base = tracking.ancestor_run(loaded.source_run_id, "train") if loaded.source_run_id else None
        if base is None:
            raise ValueError(f"distill_alpha needs a teacher: {spec.model_uri!r} has no train run in its lineage; "
                             "pass teacher_uri")
        recovery = replace(recovery, teacher_uri=f"runs:/{base}/model")
    distill_from = teacher(recovery, loaded, splits, device)
    arch = loaded.spec["arch"]
    model = copy_loaded(loaded)
    masked_layers = reattach_masks(model)
    if spec.qat != "none":
        enable_qat(model, spec.qat)  # before the Trainer builds its optimizer over the parametrized weights
    inherited = inherited_method(loaded)
    tags = {"parent_run_id": loaded.source_run_id, "dataset": splits.dataset, "arch": arch,
            "source_model_uri": spec.model_uri, "method": inherited.get("method", "none"),
            **{k: v for k, v in inherited.items() if k != "method"}, **seed_params(found.data, config)}
    seed_everything(config.seed)
    trainer = Trainer(model, splits, config, device, progress=run.progress, teacher=distill_from)
    name = f"finetune {inherited.get('method', arch)} {config.epochs:g}ep <- {origin(loaded)}"
    with start_run(run, "finetune", tags, name) as active:
        tracking.log_params({"model_uri": spec.model_uri, **found.data.logged(),
                             **{k: v for k, v in asdict(trainer.config).items()
                                if k not in ("width", "bn_sparsity")},  # width: the spec's; bn_sparsity: train's
                             "tta_flip": config.tta_flip, "device": str(device), "masked_layers": masked_layers,
                             "ratio": inherited.get("ratio", ""), "qat": spec.qat,
                             "precisions": ",".join(run.precisions), **recovery.logged()})
        fit(trainer, lambda epoch, metrics: tracking.log_metrics(metrics, step=epoch))
        trained = trainer.eval_model
        if spec.qat != "none":
            disable_qat(trained)
        make_permanent(trained)
        if "ratio" in inherited:
            tracking.log_metrics({"ratio": float(inherited["ratio"])})
        # Reductions of a fine-tuned model are stated against the unpruned architecture, not the pruned parent.
        reference = unpruned_reference(loaded, splits.num_classes)  # foreign: the model it was fine-tuned from
        measurement = Measurement(splits, device, config.tta_flip, run.precisions, loaded.input_shape)
        log_trained_outputs(trained, measurement, arch, reference=reference,
                            extra_spec={"pruning": loaded.spec.get("pruning", {}),
                                        "input_shape": list(loaded.input_shape)},
                            code_paths=loaded.code_paths)
        return active.info.run_id
