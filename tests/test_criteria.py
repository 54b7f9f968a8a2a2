"""The importance-criterion methods (taylor, group_norm, bn_scale, hessian, fpgm): which channels each removes, per
group and global ranking, iterative steps, every scope of the zoo's ResNets, VGG and graph models, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from prune_tracker.core.models import architecture_spec, build_from_spec, build_model
from prune_tracker.core.pruning import PruneContext, get_method, known_methods
from prune_tracker.core.pruning.channels import n_remove
from prune_tracker.core.pruning.stages import cifar_stages, stage_counts
from prune_tracker.core.training import TrainConfig, bn_scale_penalty

pytestmark = pytest.mark.usefixtures("one_thread")
CRITERIA = ["taylor", "group_norm", "bn_scale", "hessian", "fpgm"]
FAST = {"hessian": {"samples": 8}, "taylor": {"batches": 2}}


def make_ctx(size: int = 16, n: int = 32, calls: list | None = None) -> PruneContext:
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(n, 3, size, size, generator=gen), torch.randint(0, 10, (n,), generator=gen)

    def batches():
        if calls is not None:
            calls.append(1)
        return iter([(images[i:i + 16], labels[i:i + 16]) for i in range(0, n, 16)])

    return PruneContext(example_input=images[:1], calibration_batches=batches, evaluate=lambda m: 0.0,
                        finetune=lambda *a, **k: None, log=lambda _m: None)


def resnet20() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.weight.data.uniform_(0.5, 1.5)
    return model


def kept(result, layer: str) -> list[int]:
    return result.details["kept_channels"][layer]


def test_every_criterion_is_a_listed_method():
    assert set(CRITERIA) <= set(known_methods())
    assert all(get_method(name).summary and get_method(name).ratio_kind == "channels" for name in CRITERIA)


def test_bn_scale_removes_the_smallest_scales():
    model = resnet20()
    model.layer1[0].bn1.weight.data = torch.arange(1.0, 17.0)  # channel c scale c + 1
    model.layer1[0].bn1.weight.data[[3, 9]] = torch.tensor([-20.0, 0.01])  # |gamma| counts, not gamma
    result = get_method("bn_scale").prune(model, 0.25, make_ctx())
    assert kept(result, "layer1.0.conv1") == [*range(3, 9), *range(10, 16)]  # 9, 0, 1, 2 go


def test_group_norm_scores_the_whole_group():
    """DepGraph's group norm: a channel with a tiny filter but a large input slice in the next conv stays; Li et
    al.'s filter L1 removes it."""
    model = resnet20()
    block = model.layer1[0]
    block.conv1.weight.data[2] *= 1e-3
    block.conv2.weight.data[:, 2] *= 100.0
    assert 2 in kept(get_method("group_norm").prune(model, 0.5, make_ctx()), "layer1.0.conv1")
    assert 2 not in kept(get_method("li_filters").prune(model, 0.5, make_ctx()), "layer1.0.conv1")


@pytest.mark.parametrize("method", ["taylor", "hessian"])
def test_gradient_criteria_remove_channels_the_loss_does_not_see(method):
    """Channels whose outputs the next conv ignores have zero gradient (taylor |w g| = 0, hessian w^2 g^2 = 0),
    however large their filters: they go first."""
    model = resnet20()
    dead = [1, 4, 6, 11]
    block = model.layer1[0]
    block.conv2.weight.data[:, dead] = 0.0
    block.conv1.weight.data[dead] *= 50.0
    result = get_method(method).prune(model, 0.25, make_ctx(), **FAST.get(method, {}))
    assert set(range(16)) - set(kept(result, "layer1.0.conv1")) == set(dead)
    assert all(p.grad is None for p in result.model.parameters())  # the scoring gradients are not left behind


def test_fpgm_removes_the_filters_nearest_the_others():
    """Filters near the layer's geometric median go (the others can stand in for them), though their norms are the
    largest: 12 nearly equal large filters and 4 small scattered ones; FPGM takes 4 of the 12, magnitude the 4."""
    model = resnet20()
    block = model.layer1[0]
    torch.manual_seed(1)
    scattered = [0, 5, 7, 12]
    centre, column = torch.randn(16, 3, 3), torch.randn(16, 3, 3)
    for c in range(16):
        if c in scattered:
            block.conv1.weight.data[c] = 0.5 * torch.randn(16, 3, 3)
            block.conv2.weight.data[:, c] = 0.5 * torch.randn(16, 3, 3)
        else:
            block.conv1.weight.data[c] = 10 * centre + 0.01 * torch.randn(16, 3, 3)
            block.conv2.weight.data[:, c] = 10 * column + 0.01 * torch.randn(16, 3, 3)
    removed = set(range(16)) - set(kept(get_method("fpgm").prune(model, 0.25, make_ctx()), "layer1.0.conv1"))
    assert len(removed) == 4 and not removed & set(scattered)
    magnitude = get_method("group_norm").prune(model, 0.25, make_ctx())
    assert set(range(16)) - set(kept(magnitude, "layer1.0.conv1")) == set(scattered)


def test_global_ranking_cuts_unevenly_to_the_total():
    model = resnet20()
    model.layer1[0].bn1.weight.data *= 1e-3  # one group's scales far below the others
    result = get_method("bn_scale").prune(model, 0.3, make_ctx(), **{"global": True})
    layers = result.details["layers"]
    assert layers["layer1.0.conv1"]["channels_after"] == 1  # emptied but for one channel
    before = sum(r["channels_before"] for r in layers.values())
    after = sum(r["channels_after"] for r in layers.values())
    assert before - after == round(before * 0.3)
    assert len({r["channels_after"] for r in layers.values()}) > 2 and result.details["ranking"] == "global"


@pytest.mark.parametrize("method", CRITERIA)
@pytest.mark.parametrize("scope", ["block", "stage", "all"])
def test_every_criterion_on_every_scope_of_a_cifar_resnet(method, scope):
    model = resnet20()
    result = get_method(method).prune(model, 0.5, make_ctx(), scope=scope, **FAST.get(method, {}))
    pruned = result.model
    if scope != "stage":
        assert all(r["channels_after"] == r["channels_before"] - n_remove(r["channels_before"], 0.5)
                   for r in result.details["layers"].values())
    if scope != "block":
        counts = stage_counts([s.width for s in cifar_stages(model)], 0.5)
        assert [s.width for s in cifar_stages(pruned)] == [w - k for w, (k, _, _) in
                                                            zip([16, 32, 64], counts, strict=True)]
    clone = build_from_spec(architecture_spec(pruned, "resnet20", 10))
    clone.load_state_dict(pruned.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(clone.eval()(x), pruned.eval()(x))


@pytest.mark.parametrize("method", CRITERIA)
def test_every_criterion_on_vgg_and_a_graph_model(method):
    vgg = build_model("vgg11_bn").eval()
    result = get_method(method).prune(vgg, 0.5, make_ctx(size=32), skip_last=1, **FAST.get(method, {}))
    assert result.model.features[0].out_channels == 32 and result.model.features[-4].out_channels == 512
    graph = build_model("torchvision:mobilenet_v3_small").eval()
    result = get_method(method).prune(graph, 0.5, make_ctx(size=32), **FAST.get(method, {}))
    assert result.details["scope"] == "graph" and result.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    unscored = result.details["unscored"]
    assert bool(unscored) == (method == "bn_scale")  # the squeeze-excitation Linear groups have no BatchNorm
    assert all(result.details["layers"][name]["channels_after"] == result.details["layers"][name]["channels_before"]
               for name in unscored)


def test_iterative_steps_rescore_and_land_on_the_one_shot_widths():
    calls: list = []
    steps = get_method("taylor").prune(resnet20(), 0.5, make_ctx(calls=calls), iterative_steps=3, batches=1)
    assert len(calls) == 3  # gradients taken again on the model of each step
    one_shot = get_method("taylor").prune(resnet20(), 0.5, make_ctx(), batches=1)
    assert {n: r["channels_after"] for n, r in steps.details["layers"].items()} == \
        {n: r["channels_after"] for n, r in one_shot.details["layers"].items()}
    assert steps.details["iterative_steps"] == 3


class NoBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).mean((2, 3)))


@pytest.mark.parametrize("method,model,options,message", [
    ("taylor", "resnet20", {"iterative_steps": 0}, "taylor: option iterative_steps=0 must be >= 1"),
    ("fpgm", "resnet20", {"scope": "stage", "global": "true"}, "fpgm: global=true ranks block-internal channels"),
    ("group_norm", "resnet20", {"scope": "stage", "iterative_steps": 2}, "group_norm: iterative_steps=2 needs"),
    ("bn_scale", "no_bn", {}, "bn_scale: NoBatchNorm has no BatchNorm with a scale"),
    ("hessian", "no_bn", {"scope": "stage"}, "hessian: scope=stage needs an option-A CIFAR ResNet"),
])
def test_bad_input_is_one_line(method, model, options, message):
    net = resnet20() if model == "resnet20" else NoBatchNorm().eval()
    with pytest.raises(ValueError) as err:
        get_method(method).prune(net, 0.5, make_ctx(), **options)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_gradient_criteria_need_calibration_data():
    ctx = PruneContext(example_input=torch.zeros(1, 3, 16, 16), calibration_batches=lambda: iter([]),
                       evaluate=lambda m: 0.0, finetune=lambda *a, **k: None)
    with pytest.raises(ValueError, match=r"^taylor: calibration_batches yielded no images"):
        get_method("taylor").prune(resnet20(), 0.5, ctx)


def test_bn_sparsity_penalises_batchnorm_scales():
    model = resnet20()
    total = sum(float(m.weight.abs().sum()) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert float(bn_scale_penalty(model, 1e-4)) == pytest.approx(1e-4 * total, rel=1e-5)
    assert bn_scale_penalty(model, 0.0) == 0.0
    with pytest.raises(ValueError, match=r"bn_sparsity=-1 must be a finite number >= 0"):
        TrainConfig(bn_sparsity=-1).validate()


def test_train_command_takes_bn_sparsity():
    from prune_tracker.cli import cli

    option = next(p for p in cli.commands["train"].params if p.name == "bn_sparsity")
    assert option.default == 0.0
    result = CliRunner().invoke(cli, ["train", "--bn-sparsity", "-1"])
    assert result.exit_code == 2 and "bn_sparsity" in result.output.replace("-", "_")
