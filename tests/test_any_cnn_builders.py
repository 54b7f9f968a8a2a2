"""Channel pruning of every torchvision classification family at 32x32 (the smallest builder of each; set
ANY_CNN_ALL_BUILDERS=1 to run every builder torchvision lists, ~20 min), and the graph cut's handling of grouped
convolutions, channel shuffles and Torch-Pruning failures, in process (no MLflow)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prune_tracker.core.models import architecture_spec, build_from_spec, build_model
from prune_tracker.core.models.torchvision_zoo import builder_names
from prune_tracker.core.pruning import PruneContext, get_method
from prune_tracker.core.pruning.channels import n_remove
from prune_tracker.core.pruning.graph import GraphPruneError, GraphPruner, widths

pytestmark = pytest.mark.usefixtures("one_thread")

# The smallest builder of each family the issue lists (resnet, resnext, wide_resnet share ResNet's Bottleneck; the
# all-builders run covers the others), and the refusals: models that cannot run on 32x32 images, a transformer.
WORKS = ["resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "regnet_x_400mf", "regnet_y_400mf", "densenet121",
         "googlenet", "efficientnet_b0", "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5", "squeezenet1_1",
         "convnext_tiny", "vgg11_bn"]
REFUSED = {"inception_v3": "does not run on an input of shape 3x32x32: RuntimeError: Calculated padded input size",
           "vit_b_32": "does not run on an input of shape 3x32x32: AssertionError: Wrong image height",
           "maxvit_t": "does not run on an input of shape 3x32x32: RuntimeError: shape",
           "swin_t": "SwinTransformer computes attention (features.1.0.attn): the graph scope cuts the channels of "
                     "convolutional networks"}
ALL = os.environ.get("ANY_CNN_ALL_BUILDERS") == "1"


def context() -> PruneContext:
    return PruneContext(example_input=torch.zeros(1, 3, 32, 32), calibration_batches=lambda: [],
                        evaluate=lambda m: 0.0, finetune=lambda *a, **k: None)


def check_cut(model: nn.Module, result, arch: str, classes: int) -> None:
    """Only the groups' layers changed, each group by its blocks x round(positions * 0.5); rebuilt from the JSON spec
    the pruned model computes the same outputs."""
    pruned = result.model.eval()
    layers = result.details["layers"]
    before, after = widths(model), widths(pruned)
    touched = {name for group, row in layers.items() for name in (group, *row["coupled"])}
    assert {n for n in before if before[n] != after.get(n)} <= touched
    for row in layers.values():
        blocks = row.get("channel_groups", 1)
        per_block = row["channels_before"] // blocks
        assert row["channels_after"] == row["channels_before"] - blocks * n_remove(per_block, 0.5)
    rebuilt = build_from_spec(json.loads(json.dumps(architecture_spec(pruned, arch, classes))))
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), pruned(x))
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in pruned.parameters())


@pytest.mark.parametrize("builder", builder_names() if ALL else WORKS + sorted(REFUSED))
def test_every_torchvision_family_prunes_or_refuses_in_one_line(builder):
    torch.manual_seed(0)
    arch = f"torchvision:{builder}"
    model = build_model(arch, num_classes=3).eval()
    try:
        result = get_method("li_filters").prune(model, 0.5, context())
    except ValueError as err:  # a refusal: one line naming the model or the layer
        message = str(err)
        assert "\n" not in message and message.startswith("li_filters: "), message
        if not ALL:
            assert builder in REFUSED and REFUSED[builder] in message, message
        return
    assert builder not in REFUSED
    assert len(result.details["layers"]) >= 5
    check_cut(model, result, arch, 3)


def test_resnext_grouped_convs_keep_equal_groups():
    """ResNeXt's grouped 3x3 conv loses the same positions in each of its 32 groups, keeps its groups."""
    model = build_model("torchvision:resnext50_32x4d", num_classes=3).eval()
    result = get_method("li_filters").prune(model, 0.5, context())
    conv2 = result.model.layer1[0].conv2
    assert (conv2.in_channels, conv2.out_channels, conv2.groups) == (64, 64, 32)  # 128 -> 64, 2 per group
    kept = result.details["kept_channels"]["layer1.0.conv1"]
    per_block = [{c % 4 for c in kept if c // 4 == block} for block in range(32)]
    assert all(len(p) == 2 and p == per_block[0] for p in per_block)
    assert result.details["layers"]["layer1.0.conv1"]["channel_groups"] == 32


class GroupedNet(nn.Module):
    """A grouped conv between two plain ones, a channel shuffle, a depthwise conv."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.grouped, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(16)
        self.mix, self.bn3 = nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24)
        self.depthwise = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.grouped(x)))
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
        x = F.relu(self.depthwise(F.relu(self.bn3(self.mix(x)))))
        return self.fc(x.mean((2, 3)))


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def test_grouped_conv_shuffle_and_depthwise_on_a_custom_graph():
    model = _randomised(GroupedNet())
    result = get_method("li_filters").prune(model, 0.5, context())
    layers, pruned = result.details["layers"], result.model
    assert layers["conv1"]["channel_groups"] == 4 and pruned.grouped.in_channels == 8 and pruned.grouped.groups == 4
    assert "grouped" in result.details["kept_whole"] and "channel shuffle" in result.details["kept_whole"]["grouped"]
    assert pruned.grouped.out_channels == 16 and pruned.mix.in_channels == 16  # the shuffled channels stay
    assert pruned.depthwise.in_channels == pruned.depthwise.groups == pruned.mix.out_channels == 12  # follows mix
    x = torch.randn(3, 3, 32, 32)
    assert pruned(x).shape == (3, 5)


def test_a_grouped_conv_cut_in_unequal_blocks_is_refused_naming_the_group(monkeypatch):
    """The function check catches what equal blocks prevent: with blocks ignored, the grouped conv's groups would
    read other channels than before."""
    model = _randomised(GroupedNet())
    original = GraphPruner._why_whole

    def ignore_blocks(self, group, tp_group):
        reason = original(self, group, tp_group)
        group.chunks = 1
        return reason

    monkeypatch.setattr(GraphPruner, "_why_whole", ignore_blocks)
    with pytest.raises(GraphPruneError, match=r"^li_filters: mis-prune at conv1: ") as err:
        get_method("li_filters").prune(model, 0.5, context())
    assert "\n" not in str(err.value)


def test_torch_pruning_failures_are_one_line(monkeypatch):
    import torch_pruning as tp

    def explode(*_args, **_kwargs):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", explode)
    with pytest.raises(GraphPruneError, match=r"^li_filters: Torch-Pruning cannot trace GroupedNet: "
                                              r"ZeroDivisionError: integer division or modulo by zero$"):
        get_method("li_filters").prune(GroupedNet().eval(), 0.5, context())


def test_shufflenet_keeps_the_shuffled_channels_whole():
    model = build_model("torchvision:shufflenet_v2_x0_5", num_classes=3).eval()
    result = get_method("li_filters").prune(model, 0.5, context())
    whole = result.details["kept_whole"]
    assert {"stage2.0.branch1.2", "stage2.0.branch2.5"} <= set(whole)
    assert result.model.stage2[0].branch1[2].out_channels == 24  # concatenated, then shuffled: kept
    assert result.model.stage2[1].branch2[0].out_channels == 12  # inside a branch: cut
