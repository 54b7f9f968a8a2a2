"""Learning-rate and image-size schedules, as pure functions of the step: one-cycle, cosine and constant
(`schedule_factor`, the one definition the Trainer and learning-rate rewinding share), the parent schedule a
rewinding fine-tune replays (Renda et al. 2020), and progressive resizing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .training import TrainConfig

SCHEDULES = ("onecycle", "cosine", "constant")  # what a model can be trained with (a rewinding parent too)


def parse_resize_schedule(text: str) -> list[tuple[int, float]]:
    """"16:0.4,24:0.3" -> [(16, 0.4), (24, 0.7)]: image size and the fraction of training where it ends."""
    phases, end = [], 0.0
    for part in filter(None, (p.strip() for p in text.split(","))):
        size, _, fraction = part.partition(":")
        try:
            size_px, share = int(size), float(fraction)
        except ValueError:
            size_px, share = 0, -1.0
        if not (8 <= size_px <= 32 and 0 < share <= 1) or end + share > 1 + 1e-9:
            raise ValueError(f"resize_schedule={text!r} must look like '16:0.4,24:0.3' (sizes 8-32 px, "
                             "fractions of training adding up to at most 1)")
        end += share
        phases.append((size_px, end))
    return phases


def one_cycle_factor(
    step: float, total_steps: int, warmup_fraction: float, div: float = 25.0, final_div: float = 1e3
) -> float:
    """LR multiplier of the linear one-cycle schedule at `step` of `total_steps` (>= 1): from 1/div up to 1
    at step warmup_fraction * (total_steps - 1), then down to 1/(div * final_div) at the last step.
    Defined for any step count, unlike torch's OneCycleLR, which divides by zero when the warm-up ends
    on step 0 (e.g. 4 steps at warmup_fraction 0.25). A single step, or no warm-up, starts at the peak."""
    last = max(total_steps - 1, 0)
    step = min(max(step, 0), last)
    peak = warmup_fraction * last
    if step <= peak and peak > 0:
        return 1 / div + (1 - 1 / div) * step / peak
    if step <= peak:  # peak == 0
        return 1.0
    return 1 + (1 / (div * final_div) - 1) * (step - peak) / (last - peak)


def schedule_factor(schedule: str, step: float, total_steps: int, warmup_fraction: float) -> float:
    """LR multiplier of `schedule` (one of SCHEDULES) at `step` of `total_steps`: the one definition the
    Trainer and learning-rate rewinding share. `step` may be fractional (rewinding interpolates).
    cosine: (1 + cos(pi * step / total_steps)) / 2, torch's CosineAnnealingLR(T_max=total_steps) in closed
    form: 1 at step 0, reaching 0 one step past the last."""
    if schedule == "onecycle":
        return one_cycle_factor(step, total_steps, warmup_fraction)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(max(step, 0), total_steps) / total_steps))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule={schedule!r} must be one of: {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class ParentSchedule:
    """The learning-rate schedule a parent model was trained with, `total_steps` optimizer steps long."""

    lr: float
    schedule: str
    total_steps: int
    warmup_fraction: float = 0.25

    @classmethod
    def from_config(cls, config: TrainConfig, steps_per_epoch: int) -> ParentSchedule:
        """The parent of a `schedule="rewind"` config, its length counted in steps of `steps_per_epoch` (the
        Trainer's own count, so a parent trained on the same data at the same batch size matches step for step;
        otherwise the shape, a function of step / total, is replayed at this run's step granularity)."""
        steps = max(1, math.ceil(config.parent_epochs * steps_per_epoch))
        return cls(config.parent_lr, config.parent_schedule, steps, config.parent_warmup_fraction)

    def factor(self, step: float) -> float:
        return schedule_factor(self.schedule, step, self.total_steps, self.warmup_fraction)

    def lr_at(self, step: float) -> float:
        """The parent's learning rate at (possibly fractional) `step`, as its Trainer ran it."""
        return self.lr * self.factor(step)


def rewind_step(step: int, total_steps: int, parent_steps: int, rewind_fraction: float | None) -> float:
    """The parent step that step `step` of a `total_steps`-step fine-tune replays (learning-rate rewinding).

    Start s = rewind_fraction * parent_steps, or, with None, s = max(parent_steps - total_steps, 0): Renda et
    al. 2020 (Sec. 3), retraining for t epochs uses the schedule of the parent's last t epochs. The fine-tune's
    first step replays s and its last step the parent's last step; linear in between:
        j(i) = s + i * (parent_steps - 1 - s) / (total_steps - 1)   (j = s for a one-step fine-tune),
    so when total_steps == parent_steps - s it is the parent's own steps, j = s + i; otherwise the remaining
    schedule is compressed or stretched onto the fine-tune."""
    last = max(parent_steps - 1, 0)
    start = max(parent_steps - total_steps, 0) if rewind_fraction is None else rewind_fraction * parent_steps
    start = min(start, last)
    if total_steps <= 1:
        return start
    return start + min(max(step, 0), total_steps - 1) * (last - start) / (total_steps - 1)


def rewind_lr(step: int, total_steps: int, parent: ParentSchedule, rewind_fraction: float | None = None) -> float:
    """Learning rate at step `step` of a `total_steps`-step fine-tune that rewinds to `parent`'s schedule."""
    return parent.lr_at(rewind_step(step, total_steps, parent.total_steps, rewind_fraction))
