import pytest
import torch

from prune_tracker.core.models import (
    UnknownArchError,
    architecture_spec,
    build_from_spec,
    build_model,
    count_params,
    known_archs,
    zero_init_residual,
)

PUBLISHED = {"resnet20": 0.27e6, "resnet32": 0.46e6, "resnet56": 0.85e6, "resnet110": 1.7e6, "vgg16_bn": 15.0e6,
             "resnet18": 11.2e6}


@pytest.mark.parametrize("arch,published", PUBLISHED.items())
def test_parameter_counts_match_published(arch, published):
    assert abs(count_params(build_model(arch)) - published) / published < 0.03


@pytest.mark.parametrize("arch", known_archs())
def test_every_arch_runs_on_cifar_shapes_with_any_class_count(arch):
    model = build_model(arch, num_classes=100).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_unknown_arch_lists_known_ones():
    with pytest.raises(UnknownArchError, match="unknown arch 'resnet21'; known: resnet20, resnet32"):
        build_model("resnet21")


def test_spec_rebuilds_a_narrower_model():
    model = build_model("resnet20")
    spec = architecture_spec(model, "resnet20", 10)
    spec["layers"]["layer1.0.conv1"]["out_channels"] = 5
    spec["layers"]["layer1.0.bn1"]["num_features"] = 5
    spec["layers"]["layer1.0.conv2"]["in_channels"] = 5
    narrow = build_from_spec(spec)
    assert narrow.layer1[0].conv1.weight.shape == (5, 16, 3, 3)
    assert count_params(narrow) < count_params(model)
    assert narrow(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert architecture_spec(narrow, "resnet20", 10) == spec


@pytest.mark.parametrize("arch,blocks", [("resnet20", 9), ("resnet56", 27), ("resnet18", 8)])
def test_zero_init_residual_starts_every_block_as_identity(arch, blocks):
    model = build_model(arch)
    assert zero_init_residual(model) == blocks
    zeroed = [m.bn2.weight for m in model.modules() if hasattr(m, "shortcut")]
    assert len(zeroed) == blocks and all(torch.count_nonzero(w) == 0 for w in zeroed)
    block = model.layer1[0].eval()
    x = torch.relu(torch.randn(2, block.conv1.in_channels, 8, 8))
    bn2 = block.bn2  # output = relu(bn2's bias (0) + shortcut(x)) = x for non-negative x
    assert torch.count_nonzero(bn2.bias) == 0
    torch.testing.assert_close(block(x), x)


def test_zero_init_residual_refuses_a_model_without_residual_blocks():
    with pytest.raises(ValueError, match="applies to ResNets"):
        zero_init_residual(build_model("vgg11_bn"))
