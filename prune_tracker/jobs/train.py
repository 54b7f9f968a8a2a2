"""`train`: a model trained from scratch (or a killed run resumed from its last checkpoint), logged as a run."""

from __future__ import annotations

import time
from dataclasses import asdict

from prune_tracker import tracking
from prune_tracker.core.flows import Measurement, image_shape
from prune_tracker.core.models import build_model
from prune_tracker.core.training import Trainer, fit, resolve_device, seed_everything
from prune_tracker.jobs.any_cnn import check_model_on_data
from prune_tracker.jobs.lineage import seed_params
from prune_tracker.jobs.outputs import check_deployable, log_trained_outputs
from prune_tracker.jobs.runs import start_run
from prune_tracker.jobs.specs import TrainSpec


def train(spec: TrainSpec) -> str:
    """Train `spec.arch` (or resume `spec.resume_run_id`); returns the run id."""
    config, run = spec.train, spec.run
    device = resolve_device(run.device)
    splits = spec.data.load()
    seed_everything(config.seed)
    model = build_model(spec.arch, splits.num_classes, zero_init=config.zero_init_residual, width=config.width)
    check_model_on_data(model, splits, f"arch={spec.arch}")  # e.g. a torchvision builder that needs larger images
    check_deployable(model, run.precisions, image_shape(splits), f"arch={spec.arch}")
    checkpoint = tracking.load_checkpoint(spec.resume_run_id) if spec.resume_run_id else None
    if spec.resume_run_id and checkpoint is None:
        raise ValueError(f"resume_run_id={spec.resume_run_id!r}: that run has no checkpoint/last.pt to resume from")
    trainer = Trainer(model, splits, config, device, progress=run.progress)
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
    width = "" if config.width == 1 else f" w{config.width:g}"
    tags = {"method": "none", "dataset": splits.dataset, "arch": spec.arch, "resumed_from_run_id": spec.resume_run_id,
            "width": None if config.width == 1 else f"{config.width:g}", **seed_params(spec.data, config)}
    name = f"train {spec.arch}{width} {splits.dataset} {config.epochs:g}ep"
    with start_run(run, "train", tags, name, spec.resume_run_id) as active:
        tracking.log_params({"arch": spec.arch, **spec.data.logged(), **asdict(config), "device": str(device),
                             "amp_dtype": str(trainer.amp_dtype), "data_source": splits.source,
                             "train_size": len(splits.train), "val_images": len(splits.val),
                             "num_classes": splits.num_classes, "precisions": ",".join(run.precisions)})
        tracking.log_dataset(splits, f"{splits.dataset}-train")

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            tracking.log_metrics(metrics, step=epoch)
            tracking.log_checkpoint(trainer.state_dict())

        started = time.perf_counter()
        fit(trainer, on_epoch_end)
        tracking.log_metrics({"train_seconds": time.perf_counter() - started})
        log_trained_outputs(trainer.eval_model, Measurement(splits, device, config.tta_flip, run.precisions),
                            spec.arch)
        return active.info.run_id
