"""Fast checks of prune_tracker.pruning on random-weight models and synthetic data (CPU, seconds)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prune_tracker.models import architecture_spec, build_from_spec, build_model
from prune_tracker.pruning import (
    PruneContext,
    channel_scope,
    channels_per_layer,
    get_method,
    global_sparsity,
    known_methods,
    make_permanent,
    prunable_layers,
    sparsity_report,
)
from prune_tracker.pruning.channels import ChannelLayer, ChannelPruner, params_after_removal, remove_channels
from prune_tracker.pruning.gmp import gmp_sparsity
from prune_tracker.pruning.han import han_schedule
from prune_tracker.pruning.lamp import lamp_scores
from prune_tracker.pruning.masks import current_weight
from prune_tracker.pruning.sensitivity import allocate
from prune_tracker.pruning.thinet import (
    contributions,
    draw_positions,
    greedy_removal,
    least_squares_scales,
    relative_error,
)

torch.set_num_threads(2)

# Options that keep every method to a few seconds on 2 CPU cores.
FAST = {
    "han": {"rounds": 2, "round_epochs": 0.5},
    "gmp": {"epochs": 2.0, "frequency": 1},
    "thinet": {"samples": 200, "per_image": 10},
    "li_filters": {"schedule": "layerwise", "layer_epochs": 0.5},
}


def _data(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def make_ctx(batch: int = 16, size: int = 16, n: int = 32) -> PruneContext:
    """Synthetic data; 16x16 images keep CIFAR ResNets cheap (global pooling), VGG needs size=32."""
    images, labels = _data(n, size)
    val_x, val_y = _data(16, size, seed=1)

    def batches():
        for i in range(0, len(images), batch):
            yield images[i:i + batch], labels[i:i + batch]

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        model.eval()
        return float((model(val_x).argmax(1) == val_y).float().mean())

    def finetune(model: nn.Module, epochs: float, step_callback=None) -> None:
        total = int(round(epochs * math.ceil(len(images) / batch)))
        if total <= 0:
            return
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        model.train()
        step = 0
        while step < total:
            for x, y in batches():
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                step += 1
                if step_callback is not None:
                    step_callback(step, total)
                if step >= total:
                    break

    return PruneContext(example_input=images[:1], calibration_batches=batches, evaluate=evaluate,
                        finetune=finetune, log=lambda _msg: None)


@pytest.fixture(scope="module")
def ctx() -> PruneContext:
    return make_ctx()


def _resnet20() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet20").eval()


def _masked_zero_positions(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight_mask == 0 for n, m in model.named_modules() if hasattr(m, "weight_mask")}


def _check_unstructured(model: nn.Module, result, ratio: float, ctx: PruneContext) -> None:
    method = get_method(result.details["method"])
    layers = prunable_layers(result.model)
    assert all(hasattr(m, "weight_orig") and hasattr(m, "weight_mask") for _, m in layers)
    if method.ratio_kind == "weights":
        total = sum(m.weight.numel() for _, m in layers)
        zeros = sum(int((current_weight(m) == 0).sum()) for _, m in layers)
        assert abs(zeros - ratio * total) <= len(layers)
    else:  # hybrid: ratio is the parameter reduction of the original model
        masked = sum(int((m.weight_mask == 0).sum()) for _, m in layers)
        left = sum(p.numel() for p in result.model.parameters()) - masked
        assert abs(left - (1 - ratio) * sum(p.numel() for p in model.parameters())) <= 1
    pruned = _masked_zero_positions(result.model)
    for name, m in result.model.named_modules():
        if name in pruned:
            assert torch.all(current_weight(m)[pruned[name]] == 0)
    ctx.finetune(result.model, 1.0)  # two SGD steps: momentum + weight decay must not revive pruned weights
    for name, m in result.model.named_modules():
        if name in pruned:
            assert torch.all(m.weight_orig.detach()[pruned[name]] * m.weight_mask[pruned[name]] == 0)
    make_permanent(result.model)
    state = result.model.state_dict()
    assert not [k for k in state if k.endswith(("_orig", "_mask"))]
    for name, zero in pruned.items():
        assert torch.all(state[f"{name}.weight"][zero] == 0)
    if method.ratio_kind == "weights":
        assert global_sparsity(result.model) >= ratio - 0.01


def _check_reload(model: nn.Module, arch: str) -> None:
    model.eval()
    clone = build_from_spec(architecture_spec(model, arch, 10))
    clone.load_state_dict(model.state_dict())
    clone.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))
        assert model(x).shape == (2, 10)


def _check_structured(model: nn.Module, result, ratio: float) -> None:
    before, after = channels_per_layer(model), channels_per_layer(result.model)
    layers = result.details["layers"]
    assert layers
    for name in layers:
        assert abs(after[name] - round(before[name] * (1 - ratio))) <= 1
    for name in set(before) - set(layers):  # block outputs, stem, classifier keep their width
        assert after[name] == before[name]
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())
    _check_reload(result.model, "resnet20")


@pytest.mark.parametrize("name", known_methods())
def test_method_reaches_ratio_and_lifecycle(name: str, ctx: PruneContext) -> None:
    model = _resnet20()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    ratio = 0.5
    result = get_method(name).prune(model, ratio, ctx, **FAST.get(name, {}))
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())  # caller's model intact
    assert result.structured == get_method(name).structured
    assert result.seconds >= 0 and result.details["method"] == name
    if result.structured:
        _check_structured(model, result, ratio)
    else:
        _check_unstructured(model, result, ratio, ctx)
        if get_method(name).changes_architecture:
            _check_reload(result.model, "resnet20")


def test_finetuned_epochs_reported(ctx: PruneContext) -> None:
    assert get_method("han").prune(_resnet20(), 0.6, ctx, rounds=3, round_epochs=0.5).finetuned_epochs == 1.0
    assert get_method("gmp").prune(_resnet20(), 0.6, ctx, epochs=1.0).finetuned_epochs == 1.0
    assert get_method("global_l1").prune(_resnet20(), 0.6, ctx).finetuned_epochs == 0.0


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18"])
def test_structured_other_archs_reload(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch).eval()
    result = get_method("li_filters").prune(model, 0.5, make_ctx(size=32, n=4))
    before, after = channels_per_layer(model), channels_per_layer(result.model)
    for name in result.details["layers"]:
        assert after[name] == round(before[name] * 0.5)
    if arch == "vgg11_bn":  # the last conv's cut trims the classifier's first Linear
        assert result.model.classifier[0].in_features == 256
    _check_reload(result.model, arch)


def test_l1_filters_keep_largest_norm_filters(ctx: PruneContext) -> None:
    model = _resnet20()
    conv = model.layer1[0].conv1
    with torch.no_grad():
        scale = torch.randperm(16).float() + 1
        conv.weight.copy_(torch.sign(torch.randn_like(conv.weight)) * scale.view(-1, 1, 1, 1))
    result = get_method("li_filters").prune(model, 0.25, ctx)
    expected = sorted(torch.argsort(scale, descending=True)[:12].tolist())
    assert result.details["kept_channels"]["layer1.0.conv1"] == expected
    assert torch.equal(result.model.layer1[0].conv1.weight, conv.weight[expected])
    assert torch.equal(result.model.layer1[0].conv2.weight, model.layer1[0].conv2.weight[:, expected])


def test_li_filters_sensitivity_allocation(ctx: PruneContext) -> None:
    result = get_method("li_filters").prune(_resnet20(), 0.5, ctx, per_layer="sensitivity",
                                            sensitivity_ratios="0.25,0.5,0.75")
    uniform = get_method("li_filters").prune(_resnet20(), 0.5, ctx)
    params = [sum(p.numel() for p in r.model.parameters()) for r in (result, uniform)]
    assert abs(params[0] - params[1]) <= 64 * 9 * 2 + 2  # same footprint as uniform, within one channel
    assert result.details["layers"] != uniform.details["layers"]
    assert "sensitivity" in result.figures and "table" in result.details["sensitivity"]


def test_params_after_removal_matches_real_cut(ctx: PruneContext) -> None:
    for arch in ("resnet20", "vgg11_bn"):
        model = build_model(arch).eval()
        removed = {lay.name: (i % 3) + 1 for i, lay in enumerate(channel_scope(model))}
        predicted = params_after_removal(model, removed)
        plan = {name: list(range(k)) for name, k in removed.items()}
        remove_channels(model, plan, torch.randn(1, 3, 32, 32))
        assert predicted == sum(p.numel() for p in model.parameters())


def test_allocate_spares_sensitive_layers() -> None:
    table = {"a": {0.25: 0.89, 0.5: 0.85, 0.75: 0.70},  # sensitive
             "b": {0.25: 0.90, 0.5: 0.90, 0.75: 0.89}}  # robust
    ratios = allocate(0.90, table, {"a": 16, "b": 16}, 0.5)
    assert ratios["a"] < 0.5 < ratios["b"]
    assert (ratios["a"] + ratios["b"]) * 16 == 16


def test_thinet_drops_unread_channels(ctx: PruneContext) -> None:
    model = _resnet20()
    dead = [1, 4, 7, 10]
    with torch.no_grad():
        model.layer1[0].conv2.weight[:, dead] = 0  # conv2 never reads these channels of conv1
    result = get_method("thinet").prune(model, 0.25, ctx, samples=300)
    kept = result.details["kept_channels"]["layer1.0.conv1"]
    assert len(kept) == 12 and not set(kept) & set(dead)
    for err in result.details["reconstruction"].values():
        assert err["error"] <= err["error_no_rescale"] + 1e-9


def test_thinet_contributions_sum_to_conv_output() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, stride=2, padding=1, bias=False)
    inputs = torch.randn(4, 5, 9, 9)
    n, f, h, w = draw_positions(inputs, conv, 20, torch.Generator().manual_seed(0))
    x = contributions(inputs, conv, n, f, h, w)
    with torch.no_grad():
        assert torch.allclose(x.sum(1), conv(inputs)[n, f, h, w], atol=1e-5)
    assert torch.allclose(x[:, 2], nn.functional.conv2d(inputs[:, 2:3], conv.weight[:, 2:3], stride=2,
                                                        padding=1)[n, f, h, w], atol=1e-5)


def test_thinet_least_squares_and_duplicates() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=gen, dtype=torch.float64)
    x[:, 5] = x[:, 2]  # channel 5 duplicates channel 2
    x[:, 4] = 0.0  # channel 4 contributes nothing
    removed = greedy_removal(x, 1)
    assert removed == [4]
    kept = [0, 1, 2, 3]  # drop the duplicate and the empty one: a scale of 2 on channel 2 is exact
    scales = least_squares_scales(x, kept)
    ones = torch.ones(4, dtype=torch.float64)
    assert relative_error(x, kept, scales) < 1e-12 < relative_error(x, kept, ones)
    assert scales[2].item() == pytest.approx(2.0)


def test_lamp_scores_and_no_empty_layer(ctx: PruneContext) -> None:
    w = torch.tensor([3.0, -1.0, 2.0])
    assert torch.allclose(lamp_scores(w), torch.tensor([1.0, 1 / 14, 4 / 13]))
    model = _resnet20()
    with torch.no_grad():
        model.layer2[1].conv1.weight.mul_(1e-3)  # a layer global magnitude would empty
    biggest = {n: current_weight(m).abs().argmax() for n, m in prunable_layers(model)}
    result = get_method("lamp").prune(model, 0.95, ctx)
    for name, m in prunable_layers(result.model):
        assert current_weight(m).flatten()[biggest[name]] != 0
        assert sparsity_report(result.model)[name] < 1.0
    assert sparsity_report(get_method("global_l1").prune(model, 0.95, ctx).model)["layer2.1.conv1"] == 1.0


def test_gmp_schedule_monotone_and_reaches_target() -> None:
    values = [gmp_sparsity(t, 1000, 0.9, frequency=50) for t in range(1001)]
    assert values[0] == 0.0 and values[-1] == 0.9 and values[750] == 0.9
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert len(set(values)) > 10


def test_gmp_masks_grow_during_finetune(ctx: PruneContext) -> None:
    result = get_method("gmp").prune(_resnet20(), 0.8, ctx, epochs=3.0, frequency=1, end_fraction=1.0)
    schedule = [s for _, s in result.details["schedule"]]
    assert len(schedule) >= 3 and schedule == sorted(schedule) and schedule[-1] == pytest.approx(0.8)
    assert abs(result.details["sparsity"] - 0.8) < 1e-3


def test_han_schedule() -> None:
    s = han_schedule(0.9, 3)
    assert s == sorted(s) and s[-1] == pytest.approx(0.9)


def test_channel_pruner_detects_mis_prune(ctx: PruneContext) -> None:
    model = _resnet20()
    good = channel_scope(model)[0]
    wrong = ChannelLayer(good.name, good.conv, good.bn_name, "layer1.1.conv2", model.layer1[1].conv2)
    with pytest.raises(RuntimeError, match="mis-prune"):
        ChannelPruner(model, ctx.example_input).remove(wrong, [0, 1])


def test_unknown_method_lists_known() -> None:
    with pytest.raises(ValueError, match="unknown method 'nope'; known: .*global_l1.*lamp"):
        get_method("nope")


@pytest.mark.parametrize("ratio", [float("nan"), -0.1, 1.0, 1.5, "abc"])
def test_bad_ratio(ratio, ctx: PruneContext) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)") as err:
        get_method("global_l1").prune(_resnet20(), ratio, ctx)
    assert repr(ratio) in str(err.value)


def test_bad_options(ctx: PruneContext) -> None:
    with pytest.raises(ValueError, match="unknown option.*bogus.*known: keep_first"):
        get_method("lamp").prune(_resnet20(), 0.5, ctx, bogus=1)
    with pytest.raises(ValueError, match="must be one of uniform, sensitivity"):
        get_method("li_filters").prune(_resnet20(), 0.5, ctx, per_layer="random")
    with pytest.raises(ValueError, match="not a valid int"):
        get_method("han").prune(_resnet20(), 0.5, ctx, rounds="three")
