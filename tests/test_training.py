import dataclasses
import math

import pytest
import torch
from torch import nn

from prune_tracker.core.data import load_splits
from prune_tracker.core.models import build_model
from prune_tracker.core.training import (
    SCHEDULES,
    TrainConfig,
    Trainer,
    distillation_loss,
    evaluate,
    finetune_fn,
    fit,
    one_cycle_factor,
    seed_everything,
)


@pytest.fixture(scope="module")
def splits():
    return load_splits("synthetic", train_subset=1000, val_size=200)


def _trainer(splits, epochs=3, **kw):
    seed_everything(0)
    config = TrainConfig(epochs=epochs, batch_size=64, lr=0.1, ema_decay=0.9, **kw)
    return Trainer(build_model("resnet20"), splits, config, torch.device("cpu"), progress=False)


def test_training_learns_synthetic_data_well_above_chance(splits):
    trainer = _trainer(splits)
    history = []
    fit(trainer, lambda epoch, metrics: history.append(metrics))
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    accuracy, _ = evaluate(trainer.eval_model, splits.test, splits, torch.device("cpu"), tta_flip=True)
    assert accuracy > 0.6  # chance is 0.1


def test_resume_from_checkpoint_gives_the_same_weights(splits):
    straight = _trainer(splits, epochs=2)
    fit(straight)
    interrupted = _trainer(splits, epochs=2)
    interrupted.train_epoch()
    state = interrupted.state_dict()
    seed_everything(1)  # another initialisation and data order: only the checkpoint can make the weights meet
    config = TrainConfig(epochs=2, batch_size=64, lr=0.1, ema_decay=0.9)
    resumed = Trainer(build_model("resnet20"), splits, config, torch.device("cpu"), progress=False)
    resumed.load_state_dict(state)
    assert resumed.epochs_done == 1
    epochs = []
    fit(resumed, lambda epoch, metrics: epochs.append(epoch))
    assert epochs == [2], "only the epoch left is trained"
    for key, value in straight.eval_model.state_dict().items():
        assert torch.equal(value, resumed.eval_model.state_dict()[key]), key


def _tiny_trainer(splits, epochs: float, device: str = "cpu", **kw) -> Trainer:
    """A 16-image training set at batch 16 (one step per epoch, so `epochs` steps) and a 4k-parameter CNN."""
    seed_everything(0)
    tiny = dataclasses.replace(splits, train=splits.train.subset(torch.arange(16)),
                               val=splits.val.subset(torch.arange(16)))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10))
    config = TrainConfig(epochs=epochs, batch_size=16, lr=0.1, **kw)
    return Trainer(model, tiny, config, torch.device(device), progress=False)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8])
def test_every_schedule_trains_any_number_of_steps(splits, schedule, steps):
    trainer = _tiny_trainer(splits, epochs=steps, schedule=schedule)
    lrs = []  # the learning rate each optimizer step really used
    trainer.optimizer.register_step_pre_hook(lambda opt, *_: lrs.append(opt.param_groups[0]["lr"]))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    history = []
    fit(trainer, lambda epoch, metrics: history.append((epoch, metrics)))
    assert trainer.step == steps and [epoch for epoch, _ in history] == list(range(1, steps + 1))
    assert len(lrs) == steps and all(0 <= lr <= 0.1 for lr in lrs)
    assert all(math.isfinite(m["train_loss"]) for _, m in history)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    if schedule == "constant":
        assert lrs == [0.1] * steps
    elif schedule == "cosine":  # reaches 0 at step `steps`, one past the last
        assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * t / steps)) for t in range(steps)])
    else:  # one-cycle: from lr/25 to lr/25000; a single step runs at the peak
        assert (lrs[0], lrs[-1]) == pytest.approx((0.1, 0.1) if steps == 1 else (0.004, 0.1 / 25_000))


def test_one_cycle_factor_by_hand():
    # 5 steps, warm-up 0.25: peak at step 0.25 * 4 = 1; start 1/25, end 1/25000, linear in between
    expected = [0.04, 1.0, 1 - (1 - 4e-5) / 3, 1 - 2 * (1 - 4e-5) / 3, 4e-5]
    assert [one_cycle_factor(t, 5, 0.25) for t in range(5)] == pytest.approx(expected)
    # 4 steps, warm-up 0.25 (torch's OneCycleLR divided by zero here): peak at step 0.75
    assert [one_cycle_factor(t, 4, 0.25) for t in range(4)] == pytest.approx(
        [0.04, 1 - (1 - 4e-5) * 0.25 / 2.25, 1 - (1 - 4e-5) * 1.25 / 2.25, 4e-5])
    assert one_cycle_factor(0, 1, 0.25) == 1.0 and one_cycle_factor(0, 3, 0.0) == 1.0


def test_fit_reports_epoch_curves_under_their_own_names(splits):
    history = []
    fit(_tiny_trainer(splits, epochs=2), lambda epoch, metrics: history.append(metrics))
    assert set(history[0]) == {"train_loss", "train_accuracy", "lr", "epoch_seconds", "epoch_val_accuracy",
                               "epoch_val_loss"}
    assert 0 <= history[0]["epoch_val_accuracy"] <= 1


def _next_batch(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(trainer.loader))


class _ReportsOtherDevice:
    """A CPU generator that reports a non-CPU device, as a CUDA generator does; like CUDA's, its
    set_state only takes a CPU ByteTensor."""

    device = torch.device("meta")

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def test_resume_restores_data_order_for_a_generator_on_another_device(splits):
    saved = _tiny_trainer(splits, epochs=3)
    saved.train_epoch()
    state = saved.state_dict()
    expected = _next_batch(saved)
    resumed = _tiny_trainer(splits, epochs=3)
    generator = resumed.loader.generator
    resumed.device, resumed.loader.generator = torch.device("meta"), _ReportsOtherDevice(generator)
    resumed.load_state_dict(state)
    resumed.loader.generator = generator
    assert all(torch.equal(a, b) for a, b in zip(_next_batch(resumed), expected, strict=True))


def test_resume_from_a_checkpoint_of_torchs_one_cycle_scheduler(splits):
    saved = _tiny_trainer(splits, epochs=6)
    for _ in range(3):
        saved.train_epoch()
    state = saved.state_dict()
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    older = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=6, anneal_strategy="linear")
    for _ in range(3):
        optimizer.step()
        older.step()
    state["scheduler"] = older.state_dict()  # what checkpoints held before the one-cycle LambdaLR
    resumed = _tiny_trainer(splits, epochs=6)
    resumed.load_state_dict(state)
    assert resumed.scheduler.last_epoch == 3
    fit(resumed)
    assert resumed.step == 6 and resumed.lr() == pytest.approx(0.1 / 25_000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resume_on_cuda(splits):
    saved = _tiny_trainer(splits, epochs=3, device="cuda")
    saved.train_epoch()
    state = saved.state_dict()
    expected = _next_batch(saved)
    resumed = _tiny_trainer(splits, epochs=3, device="cuda")
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(_next_batch(resumed), expected, strict=True))
    fit(resumed)
    assert resumed.step == 3


def test_schedule_and_bad_config():
    with pytest.raises(ValueError, match="schedule='linear' must be one of"):
        TrainConfig(schedule="linear").validate()
    with pytest.raises(ValueError, match="lr=nan"):
        TrainConfig(lr=float("nan")).validate()
    with pytest.raises(ValueError, match=r"warmup_fraction=1.5 must be in \[0, 1\]"):
        TrainConfig(warmup_fraction=1.5).validate()


def test_bn_weight_decay_false_exempts_batchnorm_and_biases(splits):
    trainer = _trainer(splits, epochs=1, bn_weight_decay=False)
    decayed, exempt = trainer.optimizer.param_groups
    model = trainer.model
    assert decayed["weight_decay"] == 5e-4 and exempt["weight_decay"] == 0.0
    assert {id(p) for p in exempt["params"]} == {id(model.bn1.weight), id(model.bn1.bias), id(model.fc.bias),
                                                 *(id(p) for n, p in model.named_parameters() if ".bn" in n)}
    assert all(p.ndim == 4 or p is model.fc.weight for p in decayed["params"])
    bn_before, conv_before = model.bn1.weight.detach().clone(), model.conv1.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    trainer.optimizer.step()  # zero gradients: only weight decay can move a parameter
    assert torch.equal(model.bn1.weight, bn_before)
    assert not torch.equal(model.conv1.weight, conv_before)


def test_default_trainer_decays_every_parameter(splits):
    (group,) = _trainer(splits, epochs=1).optimizer.param_groups
    assert group["weight_decay"] == 5e-4 and len(group["params"]) == len(list(build_model("resnet20").parameters()))


def test_distillation_loss_by_hand():
    student = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.5, -0.5]])
    teacher = torch.tensor([[1.0, 0.0, 3.0], [-2.0, 2.5, 0.5]])
    labels = torch.tensor([0, 2])
    alpha, temp, smooth = 0.3, 2.5, 0.1

    def log_softmax(z):  # explicit, not torch's
        return z - torch.log(torch.exp(z).sum(1, keepdim=True))

    log_p = log_softmax(student)
    ce = -((1 - smooth) * log_p[torch.arange(2), labels] + smooth / 3 * log_p.sum(1)).mean()
    p_teacher = torch.exp(log_softmax(teacher / temp))
    kl = (p_teacher * (torch.log(p_teacher) - log_softmax(student / temp))).sum() / 2  # summed, batch mean
    expected = (1 - alpha) * ce + alpha * temp**2 * kl
    assert distillation_loss(student, teacher, labels, alpha, temp, smooth).item() == pytest.approx(expected.item())
    assert torch.equal(distillation_loss(student, teacher, labels, 0.0, temp, smooth),
                       torch.nn.functional.cross_entropy(student, labels, label_smoothing=smooth))
    # alpha 1: only the soft term; zero when the student already matches the teacher
    assert distillation_loss(teacher, teacher, labels, 1.0, temp).item() == pytest.approx(0.0, abs=1e-6)


def _tiny_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


def _tiny_splits(splits):
    return dataclasses.replace(splits, train=splits.train.subset(torch.arange(16)),
                               val=splits.val.subset(torch.arange(16)))


def _distilled_weights(splits, teacher, steps: int = 3, **kw) -> list[torch.Tensor]:
    seed_everything(0)
    config = TrainConfig(epochs=steps, batch_size=16, lr=0.1, **kw)
    trainer = Trainer(_tiny_net(0), _tiny_splits(splits), config, torch.device("cpu"), progress=False,
                      teacher=teacher)
    while not trainer.done():
        trainer.train_epoch()
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_trainer_distils_from_a_frozen_teacher_on_the_same_batch(splits):
    teacher = _tiny_net(1).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # BN running stats included
    seen = {"teacher": [], "student": []}
    teacher.register_forward_pre_hook(lambda _m, args: seen["teacher"].append(args[0].clone()))
    seed_everything(0)
    student = _tiny_net(0)
    student.register_forward_pre_hook(lambda m, args: seen["student"].append(args[0].clone()) if m.training else None)
    config = TrainConfig(epochs=4, batch_size=16, lr=0.1, distill_alpha=0.7, resize_schedule="16:0.5")
    finetune_fn(_tiny_splits(splits), config, torch.device("cpu"), teacher=teacher)(student, 4)
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert len(seen["teacher"]) == len(seen["student"]) == 4
    assert [x.shape[-1] for x in seen["teacher"]] == [16, 16, 32, 32]  # resized like the student's batch
    assert all(torch.equal(t, s) for t, s in zip(seen["teacher"], seen["student"], strict=True))
    # alpha 0, or no teacher: exactly plain cross-entropy training; alpha > 0 trains differently
    plain = _distilled_weights(splits, None)
    assert all(torch.equal(a, b) for a, b in zip(plain, _distilled_weights(splits, _tiny_net(1)), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(plain, _distilled_weights(splits, None, distill_alpha=0.5),
                                                  strict=True))
    distilled = _distilled_weights(splits, _tiny_net(1), distill_alpha=0.5)
    assert any(not torch.equal(a, b) for a, b in zip(plain, distilled, strict=True))


@pytest.mark.parametrize("field, value, message", [
    ("distill_alpha", 2, r"distill_alpha=2 must be in \[0, 1\]"),
    ("distill_alpha", float("nan"), r"distill_alpha=nan must be in \[0, 1\]"),
    ("distill_temperature", 0.0, "distill_temperature=0.0 must be a finite number > 0"),
])
def test_bad_distillation_config(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value}).validate()


def _lrs(splits, epochs: float, lr: float, **kw) -> list[float]:
    """Learning rate of every optimizer step of a tiny run with one step per epoch."""
    seed_everything(0)
    config = TrainConfig(epochs=epochs, batch_size=16, lr=lr, **kw)
    trainer = Trainer(_tiny_net(0), _tiny_splits(splits), config, torch.device("cpu"), progress=False)
    lrs = []
    trainer.optimizer.register_step_pre_hook(lambda opt, *_: lrs.append(opt.param_groups[0]["lr"]))
    while not trainer.done():
        trainer.train_epoch()
    return lrs


@pytest.mark.parametrize("parent_schedule", ["onecycle", "cosine"])
def test_rewind_replays_the_parents_learning_rates(splits, parent_schedule):
    parent = _lrs(splits, 12, 0.3, schedule=parent_schedule, warmup_fraction=0.4)
    assert len(parent) == 12
    rewind = {"schedule": "rewind", "parent_lr": 0.3, "parent_schedule": parent_schedule, "parent_epochs": 12,
              "parent_warmup_fraction": 0.4}
    # the fine-tune's own lr / warmup_fraction play no part; from rewind_fraction 0.5, 6 steps = parent's 6..11
    assert _lrs(splits, 6, 0.01, warmup_fraction=0.1, rewind_fraction=0.5, **rewind) == pytest.approx(parent[6:])
    # rewind_fraction None: the parent's last `epochs` epochs, step for step (Renda et al. 2020)
    assert _lrs(splits, 4, 0.01, **rewind) == pytest.approx(parent[8:])
    # a longer fine-tune stretches the same stretch: parent steps 3..11 at every other step, first to last
    stretched = _lrs(splits, 17, 0.01, rewind_fraction=0.25, **rewind)
    assert stretched[::2] == pytest.approx(parent[3:])
    # a shorter one compresses it: starts at the rewind point, ends at the parent's last learning rate
    short = _lrs(splits, 3, 0.01, rewind_fraction=0.5, **rewind)
    assert (short[0], short[-1]) == pytest.approx((parent[6], parent[-1]))
    assert all(min(parent[6:]) <= lr <= max(parent[6:]) for lr in short)


def test_rewind_config_needs_the_parents_schedule():
    with pytest.raises(ValueError, match="parent_lr=0.0 must be a finite number > 0"):
        TrainConfig(schedule="rewind", parent_epochs=30).validate()
    with pytest.raises(ValueError, match="parent_epochs=0.0 must be a finite number > 0"):
        TrainConfig(schedule="rewind", parent_lr=0.2).validate()
    with pytest.raises(ValueError, match="parent_schedule='rewind' must be one of: onecycle, cosine, constant"):
        TrainConfig(schedule="rewind", parent_lr=0.2, parent_epochs=30, parent_schedule="rewind").validate()
    with pytest.raises(ValueError, match=r"rewind_fraction=1.0 must be in \[0, 1\)"):
        TrainConfig(schedule="rewind", parent_lr=0.2, parent_epochs=30, rewind_fraction=1.0).validate()
    TrainConfig(schedule="cosine", rewind_fraction=5.0).validate()  # only checked when rewinding
