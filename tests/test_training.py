import pytest
import torch

from prune_tracker.data import load_splits
from prune_tracker.models import build_model
from prune_tracker.training import TrainConfig, Trainer, evaluate, fit, seed_everything


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
    resumed = _trainer(splits, epochs=2)
    resumed.load_state_dict(state)
    fit(resumed)
    for key, value in straight.eval_model.state_dict().items():
        assert torch.equal(value, resumed.eval_model.state_dict()[key]), key


def test_schedule_and_bad_config():
    with pytest.raises(ValueError, match="schedule='linear' must be one of"):
        TrainConfig(schedule="linear").validate()
    with pytest.raises(ValueError, match="lr=nan"):
        TrainConfig(lr=float("nan")).validate()


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
