"""Training and evaluation loops: SGD (momentum, nesterov, weight decay), one-cycle or cosine schedule,
learning-rate rewinding for fine-tuning, knowledge distillation from a teacher, label smoothing, EMA of
weights, flip test-time augmentation, channels_last + bf16 autocast on CPUs with native bf16, mixed
precision on CUDA, per-epoch checkpoints that resume to the same result."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from .data import TRAINING, BatchLoader, DataSplits, ImageSet
from .models.width import validate_width
from .schedules import (  # noqa: F401  (re-exported: the training config and loop are where callers look)
    SCHEDULES,
    ParentSchedule,
    one_cycle_factor,
    parse_resize_schedule,
    rewind_lr,
    rewind_step,
    schedule_factor,
)

# Fine-tuning a pruned model: cosine from `lr` (the default), constant `lr`, or `rewind` (replay the parent's
# own schedule, Renda et al. 2020; see `rewind_lr`). Every TrainConfig accepts SCHEDULES + "rewind".
FINETUNE_SCHEDULES = ("cosine", "rewind", "constant")


@dataclass
class TrainConfig:
    epochs: float = 30
    batch_size: int = 128
    lr: float = 0.2
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "onecycle"
    warmup_fraction: float = 0.25
    label_smoothing: float = 0.1
    ema_decay: float = 0.0  # 0 = off; e.g. 0.999 averages the last ~1000 steps
    tta_flip: bool = True
    # Progressive resizing, e.g. "16:0.4,24:0.3": the first 40% of steps see images downscaled to 16 px,
    # the next 30% 24 px, the rest full size. Convolutions cost ~(size/32)^2, so a 2-core CPU fits
    # more epochs in the same time; the full-size phase at the end re-adapts to the test resolution.
    resize_schedule: str = ""
    # False: no weight decay on BatchNorm weights/biases and other 1-D parameters (Goyal et al. 2017).
    bn_weight_decay: bool = True
    # Zero the last BatchNorm gamma of every residual block, so each block starts as the identity
    # (Goyal et al. 2017; torchvision's `zero_init_residual`). Applied by the train job to a fresh model.
    zero_init_residual: bool = False
    # Channel multiplier of the architecture the train job builds (`models.width`: round(width * c), at least 1);
    # 1 = the published model. Recorded in the architecture spec, so the model rebuilds from spec + state_dict.
    width: float = 1.0
    # Knowledge distillation (Hinton et al. 2015) from a teacher given to the Trainer (the unpruned parent):
    # loss = (1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T); alpha 0 = off (plain CE).
    distill_alpha: float = 0.0
    distill_temperature: float = 4.0
    # schedule="rewind": learning-rate rewinding (Renda et al. 2020). The parent's lr / schedule / epochs /
    # warmup_fraction (read from the parent run) are replayed from `rewind_fraction` of its length to its end,
    # mapped onto this run's steps; `lr` and `warmup_fraction` above are then unused. rewind_fraction None:
    # Renda's definition, replay the parent's last `epochs` epochs one step per step (see `rewind_step`).
    rewind_fraction: float | None = None
    parent_lr: float = 0.0
    parent_schedule: str = "onecycle"
    parent_epochs: float = 0.0
    parent_warmup_fraction: float = 0.25
    seed: int = 0
    # Network slimming (Liu et al. 2017): an L1 penalty bn_sparsity * sum |gamma| over every BatchNorm scale is added
    # to the training loss (the logged loss stays the cross-entropy), driving the scales of unneeded channels towards
    # 0 for `bn_scale` pruning; 0 = off. Liu et al.: 1e-4 (VGG), 1e-5 (ResNet) on CIFAR.
    bn_sparsity: float = 0.0

    def validate(self) -> None:
        parse_resize_schedule(self.resize_schedule)
        validate_width(self.width)
        if not (self.epochs >= 0 and math.isfinite(self.epochs)):
            raise ValueError(f"epochs={self.epochs} must be a finite number >= 0")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr={self.lr} must be a finite number > 0")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay={self.weight_decay} must be a finite number >= 0")
        if self.schedule not in (*SCHEDULES, "rewind"):
            raise ValueError(f"schedule={self.schedule!r} must be one of: {', '.join((*SCHEDULES, 'rewind'))}")
        if not 0 <= self.warmup_fraction <= 1:
            raise ValueError(f"warmup_fraction={self.warmup_fraction} must be in [0, 1]")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay} must be in [0, 1)")
        if not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"distill_alpha={self.distill_alpha} must be in [0, 1]")
        if not (self.distill_temperature > 0 and math.isfinite(self.distill_temperature)):
            raise ValueError(f"distill_temperature={self.distill_temperature} must be a finite number > 0")
        if not (self.bn_sparsity >= 0 and math.isfinite(self.bn_sparsity)):
            raise ValueError(f"bn_sparsity={self.bn_sparsity} must be a finite number >= 0")
        if self.schedule == "rewind":
            self._validate_rewind()

    def _validate_rewind(self) -> None:
        if self.rewind_fraction is not None and not 0 <= self.rewind_fraction < 1:
            raise ValueError(f"rewind_fraction={self.rewind_fraction} must be in [0, 1) (or None: auto)")
        if not (self.parent_lr > 0 and math.isfinite(self.parent_lr)):
            raise ValueError(f"parent_lr={self.parent_lr} must be a finite number > 0 (the parent run's lr)")
        if not (self.parent_epochs > 0 and math.isfinite(self.parent_epochs)):
            raise ValueError(f"parent_epochs={self.parent_epochs} must be a finite number > 0 (the parent run's)")
        if self.parent_schedule not in SCHEDULES:
            raise ValueError(f"parent_schedule={self.parent_schedule!r} must be one of: {', '.join(SCHEDULES)}")
        if not 0 <= self.parent_warmup_fraction <= 1:
            raise ValueError(f"parent_warmup_fraction={self.parent_warmup_fraction} must be in [0, 1]")


def bn_scale_penalty(model: nn.Module, strength: float) -> torch.Tensor | float:
    """strength * sum |gamma| over the affine BatchNorms of `model` (network slimming's sparsity term); 0 when off."""
    if strength == 0:
        return 0.0
    scales = [m.weight.abs().sum() for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    return strength * torch.stack(scales).sum() if scales else 0.0


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device={device!r} must be one of: auto, cpu, cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} asked for, but CUDA is not available here; use device=cpu or auto"
        )
    return torch.device(device)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA with bf16 support, fp16 on older CUDA, bf16 on CPUs with native bf16 (AVX512_BF16 /
    AMX: ~2x faster there), else None (fp32): emulated bf16 on other CPUs is slower than fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        native = False
    return torch.bfloat16 if native and torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX") else None


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)),
    the KL summed over classes and averaged over the batch (Hinton et al. 2015: T^2 keeps the soft term's
    gradient scale independent of T). alpha 0 is exactly the cross-entropy."""
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - alpha) * ce + alpha * temperature**2 * kl


def warmup_ema(decay: float):
    """EMA (a multi_avg_fn for AveragedModel) whose decay ramps up as (1 + n) / (10 + n) towards `decay`,
    so a short run's average is not dominated by the random initial weights."""

    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        n = float(num_averaged)
        rate = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - rate)
        else:  # integer buffers such as num_batches_tracked
            for avg, cur in zip(averaged, current, strict=True):
                avg.copy_(cur)

    return average


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.bn_weight_decay:
        return [{"params": params}]
    groups = [
        {"params": [p for p in params if p.ndim > 1]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def predict_logits(
    model: nn.Module, loader: BatchLoader, tta_flip: bool = False, amp_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (fp32, CPU) and labels for every example of `loader`; with `tta_flip`, the mean of the
    logits of the image and its mirror."""
    model.eval()
    outputs, labels = [], []
    with torch.inference_mode(), _autocast(loader.device, amp_dtype):
        for x, y in loader:
            logits = model(x).float()
            if tta_flip:
                logits = (logits + model(x.flip(3)).float()) / 2
            outputs.append(logits.cpu())
            labels.append(y.cpu())
    return torch.cat(outputs), torch.cat(labels)


def accuracy_and_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    if len(labels) == 0:
        return float("nan"), float("nan")
    acc = (logits.argmax(1) == labels).float().mean().item()
    return acc, F.cross_entropy(logits, labels).item()


def evaluate(
    model: nn.Module,
    images: ImageSet,
    splits: DataSplits,
    device: torch.device,
    batch_size: int = 500,
    tta_flip: bool = False,
) -> tuple[float, float]:
    """(accuracy, loss) of `model` on `images`, evaluated in fp32."""
    loader = BatchLoader(images, batch_size, splits.mean, splits.std, device=device)
    return accuracy_and_loss(*predict_logits(model, loader, tta_flip))


class Trainer:
    """Trains a model in place. `state_dict()` / `load_state_dict()` cover everything needed to resume
    bit-for-bit: weights, optimizer, schedule position, EMA and the data order generator (not the teacher).

    `teacher`: a model to distil from when `config.distill_alpha` > 0 (moved to the device, channels_last;
    run in eval mode under no_grad on the same augmented, resized batch; never updated)."""

    def __init__(
        self,
        model: nn.Module,
        splits: DataSplits,
        config: TrainConfig,
        device: torch.device,
        step_callback: Callable[[int, int], None] | None = None,
        progress: bool = True,
        teacher: nn.Module | None = None,
    ):
        config.validate()
        self.config, self.device, self.splits = config, device, splits
        self.model = model.to(device).to(memory_format=torch.channels_last)
        order = replace(TRAINING, seed=config.seed, drop_last=len(splits.train) >= 2 * config.batch_size)
        self.loader = BatchLoader(splits.train, config.batch_size, splits.mean, splits.std, order=order, device=device)
        self.steps_per_epoch = max(1, len(self.loader))
        self.total_steps = max(1, math.ceil(config.epochs * self.steps_per_epoch))
        self.parent = ParentSchedule.from_config(config, self.steps_per_epoch) if config.schedule == "rewind" else None
        self.optimizer = torch.optim.SGD(
            _param_groups(self.model, config),
            lr=self.parent.lr if self.parent is not None else config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
        self.scheduler = self._make_scheduler()
        self.amp_dtype = autocast_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=warmup_ema(config.ema_decay), use_buffers=True)
            if config.ema_decay > 0
            else None
        )
        self.step = 0
        self._resize_phases = parse_resize_schedule(config.resize_schedule)
        self.step_callback, self.progress = step_callback, progress
        self.teacher = None
        if teacher is not None and config.distill_alpha > 0:
            self.teacher = teacher.to(device).to(memory_format=torch.channels_last).eval()

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        """LR = base lr x a function of the step: `schedule_factor`, or for rewinding the parent's own factor
        at the replayed step (base lr = the parent's lr, so the LR is exactly `rewind_lr`)."""
        c, total, parent = self.config, self.total_steps, self.parent
        if parent is not None:
            fraction = c.rewind_fraction

            def factor(step: int) -> float:
                return parent.factor(rewind_step(step, total, parent.total_steps, fraction))
        else:
            schedule, warmup = c.schedule, c.warmup_fraction

            def factor(step: int) -> float:
                return schedule_factor(schedule, step, total, warmup)

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    @property
    def eval_model(self) -> nn.Module:
        """The EMA model when EMA is on, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def epochs_done(self) -> float:
        return self.step / self.steps_per_epoch

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_epoch(self) -> dict[str, float]:
        """One pass over the data, or what is left of the budget of `config.epochs`."""
        self.model.train()
        if self.teacher is not None:
            self.teacher.eval()
        total_loss, correct, seen = 0.0, 0, 0
        remaining = self.total_steps - self.step
        batches = tqdm(
            self.loader,
            total=min(len(self.loader), remaining),
            disable=not self.progress,
            leave=False,
            desc=f"epoch {int(self.epochs_done) + 1}",
        )
        for x, y in batches:
            if self.step >= self.total_steps:
                break
            loss, logits = self._train_step(x, y)
            total_loss += loss * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        return {
            "train_loss": total_loss / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "lr": self.lr(),
        }

    def image_size(self) -> int:
        done = self.step / self.total_steps
        for size, end in self._resize_phases:
            if done < end:
                return size
        return 32

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        size = self.image_size()
        if size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        with _autocast(self.device, self.amp_dtype):
            logits = self.model(x)
            if self.teacher is None:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
            else:
                with torch.no_grad():
                    teacher_logits = self.teacher(x).float()
                c = self.config
                loss = distillation_loss(logits.float(), teacher_logits, y, c.distill_alpha, c.distill_temperature,
                                         c.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss + bn_scale_penalty(self.model, self.config.bn_sparsity)).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.step + 1 < self.total_steps:  # the schedules end on the last step
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        if self.step_callback is not None:
            self.step_callback(self.step, self.total_steps)
        return loss.item(), logits.detach()

    def done(self) -> bool:
        return self.step >= self.total_steps

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "data_generator": self.loader.generator.get_state(),
            "config": asdict(self.config),
        }

    def _load_scheduler(self, saved: dict[str, Any]) -> None:
        if "lr_lambdas" not in saved and isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
            # A one-cycle or cosine checkpoint from before `schedule_factor` (torch's OneCycleLR /
            # CosineAnnealingLR): only the position carries over, the schedule is a function of the step.
            saved = {**self.scheduler.state_dict(), "last_epoch": saved["last_epoch"]}
        self.scheduler.load_state_dict(saved)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._load_scheduler(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        # Generator.set_state takes a CPU ByteTensor whatever the generator's device (CUDA included).
        self.loader.generator.set_state(state["data_generator"].to("cpu", torch.uint8))
        self.step = int(state["step"])


EPOCH_METRICS = ("train_loss", "train_accuracy", "lr", "epoch_seconds", "epoch_val_accuracy", "epoch_val_loss")


def fit(trainer: Trainer, on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> None:
    """Train until the budget of epochs is spent, evaluating on the validation split after each epoch.

    `on_epoch_end(epoch, metrics)` gets the per-epoch curves named in EPOCH_METRICS. The validation ones
    are `epoch_val_*` (the training model or EMA, no flip TTA), so they never share a name with the final
    `val_accuracy` / `val_loss` that the jobs log with the run's TTA setting."""
    while not trainer.done():
        started = time.perf_counter()
        metrics = trainer.train_epoch()
        metrics["epoch_seconds"] = time.perf_counter() - started
        if len(trainer.splits.val):
            metrics["epoch_val_accuracy"], metrics["epoch_val_loss"] = evaluate(
                trainer.eval_model, trainer.splits.val, trainer.splits, trainer.device
            )
        if on_epoch_end is not None:
            on_epoch_end(math.ceil(trainer.epochs_done), metrics)


def finetune_fn(
    splits: DataSplits,
    config: TrainConfig,
    device: torch.device,
    progress: bool = False,
    teacher: nn.Module | None = None,
):
    """A `finetune(model, epochs, step_callback=None)` callable for pruning methods: trains in place with
    the given recipe (masks attached by torch.nn.utils.prune stay applied), distilling from `teacher` when
    `config.distill_alpha` > 0."""

    def finetune(model: nn.Module, epochs: float, step_callback=None) -> None:
        if epochs <= 0:
            return
        trainer = Trainer(
            model,
            splits,
            replace(config, epochs=epochs),
            device,
            step_callback=step_callback,
            progress=progress,
            teacher=teacher,
        )
        while not trainer.done():
            trainer.train_epoch()
        model.to(memory_format=torch.contiguous_format)

    return finetune
