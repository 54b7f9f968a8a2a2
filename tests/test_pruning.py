"""Fast checks of prune_tracker.core.pruning on random-weight models and synthetic data (CPU, seconds)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prune_tracker.core.models import architecture_spec, build_from_spec, build_model
from prune_tracker.core.pruning import (
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
from prune_tracker.core.pruning.channels import ChannelLayer, ChannelPruner, params_after_removal, remove_channels
from prune_tracker.core.pruning.gmp import gmp_sparsity
from prune_tracker.core.pruning.han import han_schedule
from prune_tracker.core.pruning.lamp import lamp_scores
from prune_tracker.core.pruning.masks import current_weight
from prune_tracker.core.pruning.sensitivity import allocate
from prune_tracker.core.pruning.thinet import (
    consumer_inputs,
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


def test_thinet_unused_consumer_is_a_clear_error(ctx: PruneContext) -> None:
    unused = nn.Conv2d(16, 16, 3, padding=1)  # not part of the model: its hook never fires
    with pytest.raises(ValueError, match="^thinet: layer9.conv2 never ran in the model's forward pass"):
        consumer_inputs(_resnet20(), unused, ctx, 4, "layer9.conv2")


def test_thinet_without_calibration_images_is_a_clear_error(ctx: PruneContext) -> None:
    empty = PruneContext(ctx.example_input, lambda: iter([(torch.empty(0, 3, 16, 16), torch.empty(0).long())]),
                         ctx.evaluate, ctx.finetune, log=ctx.log)
    with pytest.raises(ValueError, match=r"^thinet: calibration_batches yielded no images .* layer1.0.conv2"):
        get_method("thinet").prune(_resnet20(), 0.5, empty)


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
    assert values[100] == values[149] == pytest.approx(0.9 * (1 - (1 - 100 / 750) ** 3))  # held between steps
    assert len(set(values)) == 16  # t = 0, 50, ..., 700, then the target from t = 750


def test_gmp_short_window_still_prunes_gradually() -> None:
    # 5,000 images x 2 epochs at batch 128 = 78 steps; the window ends at ceil(0.75 * 78) = 59, so the
    # default frequency of 100 would be one cut; at least 10 updates means one every 59 // 10 = 5 steps
    values = [gmp_sparsity(t, 78, 0.8) for t in range(79)]
    assert values[5] == values[9] == pytest.approx(0.8 * (1 - (1 - 5 / 59) ** 3))
    assert len(set(values)) == 13 and values[59] == 0.8


def test_gmp_masks_grow_during_finetune(ctx: PruneContext) -> None:
    result = get_method("gmp").prune(_resnet20(), 0.8, ctx, epochs=3.0, frequency=1, end_fraction=1.0)
    schedule = [s for _, s in result.details["schedule"]]
    assert len(schedule) >= 3 and schedule == sorted(schedule) and schedule[-1] == pytest.approx(0.8)
    assert abs(result.details["sparsity"] - 0.8) < 1e-3


def test_gmp_default_frequency_on_a_short_finetune(ctx: PruneContext) -> None:
    # 3 epochs x 2 steps: the window ends at step ceil(0.75 * 6) = 5; s_t = 0.8 (1 - (1 - t/5)^3)
    result = get_method("gmp").prune(_resnet20(), 0.8, ctx, epochs=3.0)
    assert result.details["schedule"] == [
        (1, pytest.approx(0.3904)), (2, pytest.approx(0.6272)), (3, pytest.approx(0.7488)),
        (4, pytest.approx(0.7936)), (5, pytest.approx(0.8))]
    assert abs(result.details["sparsity"] - 0.8) < 1e-3


def test_han_schedule() -> None:
    # s_k = 1 - 0.1^(k/3): 0.1^(1/3) = 0.4641589, 0.1^(2/3) = 0.2154435
    assert han_schedule(0.9, 3) == pytest.approx([0.5358411, 0.7845565, 0.9], abs=1e-7)
    assert han_schedule(0.75, 2) == pytest.approx([0.5, 0.75])  # 1 - sqrt(0.25)
    assert han_schedule(0.6, 1) == pytest.approx([0.6])


def test_han_prunes_each_round_before_retraining(ctx: PruneContext) -> None:
    seen = []  # per-layer sparsity of layer1.0.conv1 each time han retrains

    def finetune(model: nn.Module, epochs: float, step_callback=None) -> None:
        seen.append(sparsity_report(model)["layer1.0.conv1"])
        ctx.finetune(model, epochs, step_callback)

    han_ctx = PruneContext(ctx.example_input, ctx.calibration_batches, ctx.evaluate, finetune, log=ctx.log)
    result = get_method("han").prune(_resnet20(), 0.9, han_ctx, rounds=3, round_epochs=0.5)
    assert seen == [pytest.approx(0.5358, abs=1e-3), pytest.approx(0.7846, abs=1e-3)]
    assert sparsity_report(result.model)["layer1.0.conv1"] == pytest.approx(0.9, abs=1e-3)


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


# --- iterative pruning (pruning/iterative.py) ---

from prune_tracker.core.pruning import PruningMethod, RoundPlan, iterative_prune  # noqa: E402
from prune_tracker.core.pruning.common import LAYER_OPTIONS, n_weights, target_layers, unstructured_result  # noqa: E402
from prune_tracker.core.pruning.iterative import channel_round_ratio, one_step_ratio, round_targets  # noqa: E402
from prune_tracker.core.pruning.masks import apply_masks, global_masks  # noqa: E402


def _shaking_ctx(ctx: PruneContext, zeros_seen: list) -> PruneContext:
    """A fine-tune that pushes every parameter far from zero (a pruned weight it could revive would survive
    every later magnitude cut) and records the zero positions it was handed."""

    @torch.no_grad()
    def finetune(model: nn.Module, epochs: float, step_callback=None) -> None:
        zeros_seen.append({n: current_weight(m) == 0 for n, m in prunable_layers(model)})
        for p in model.parameters():
            p.add_(10.0)

    return PruneContext(ctx.example_input, ctx.calibration_batches, ctx.evaluate, finetune, log=ctx.log)


class _LargestFirst(PruningMethod):
    """Not registered: prunes the LARGEST |w| globally, so it never re-picks earlier zeros on its own."""

    params = dict(LAYER_OPTIONS)

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts) -> object:
        layers = target_layers(model, opts)
        scores = [-current_weight(m).abs() for _, m in layers]
        apply_masks(layers, global_masks(layers, scores, int(round(ratio * n_weights(layers)))))
        return unstructured_result(model, opts)


@pytest.mark.parametrize("method", [get_method("global_l1"), _LargestFirst()], ids=["global_l1", "largest_first"])
def test_iterative_unstructured_reaches_target_and_keeps_masks(method, ctx: PruneContext) -> None:
    model, ratio, rounds = _resnet20(), 0.7, 3
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    zeros_seen, records = [], []
    result = iterative_prune(method, model, ratio, _shaking_ctx(ctx, zeros_seen),
                             RoundPlan(rounds, 0.5, on_round=lambda k, rec: records.append((k, rec))), {})
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())  # caller's model intact
    layers = prunable_layers(result.model)
    total = sum(m.weight.numel() for _, m in layers)
    zeros = sum(int((current_weight(m) == 0).sum()) for _, m in layers)
    assert abs(zeros - ratio * total) <= 1
    assert len(zeros_seen) == rounds  # a fine-tune after every round
    for name, m in layers:  # zeroed in round 1, still zero after three fine-tunes and two more cuts
        assert torch.all(current_weight(m)[zeros_seen[0][name]] == 0)
    assert [k for k, _ in records] == list(range(1, rounds + 1))
    sparsities = [rec["round_sparsity"] for _, rec in records]
    assert sparsities == sorted(sparsities) and sparsities[-1] == pytest.approx(zeros / total)
    assert sparsities[0] == pytest.approx(round_targets(ratio, rounds)[0], abs=1 / total)
    assert all(0 <= rec["round_val_accuracy"] <= 1 for _, rec in records)
    assert result.finetuned_epochs == rounds * 0.5 and result.details["ratio"] == ratio


def test_han_is_iterative_layer_magnitude(ctx: PruneContext) -> None:
    han = get_method("han").prune(_resnet20(), 0.8, ctx, rounds=3, round_epochs=0.5)
    as_rounds = iterative_prune(get_method("layer_l1"), _resnet20(), 0.8, ctx, RoundPlan(3, 0.5, finetune_last=False))
    han_rounds = iterative_prune(get_method("han"), _resnet20(), 0.8, ctx, RoundPlan(3, 0.5, finetune_last=False))
    assert han.finetuned_epochs == as_rounds.finetuned_epochs == han_rounds.finetuned_epochs == 1.0
    masks = _masked_zero_positions(han.model)
    for other in (as_rounds, han_rounds):
        assert {n: torch.equal(z, masks[n]) for n, z in _masked_zero_positions(other.model).items()} == \
            dict.fromkeys(masks, True)


def test_iterative_structured_matches_one_shot_channels(ctx: PruneContext) -> None:
    name, model, ratio, rounds = "li_filters", _resnet20(), 0.6, 3
    records = []
    result = iterative_prune(get_method(name), model, ratio, ctx,
                             RoundPlan(rounds, 0.0, on_round=lambda k, rec: records.append(rec["round_sparsity"])))
    one_shot = get_method(name).prune(model, ratio, ctx)
    assert channels_per_layer(result.model) == channels_per_layer(one_shot.model)
    assert len(records) == rounds and records == sorted(records) and records[0] > 0
    kept = result.details["kept_channels"]  # indices into the ORIGINAL layers, composed over the rounds
    for layer in channel_scope(result.model):
        original = dict(model.named_modules())[layer.name].weight
        assert torch.equal(layer.conv.weight, original[kept[layer.name]])
        assert result.details["layers"][layer.name]["channels_before"] == original.shape[0]
    _check_reload(result.model, "resnet20")


def test_iterative_channel_ratios_end_on_the_one_shot_widths() -> None:
    """Round ratios of the thinner model: every round stays one uniform cut away from the one-shot widths."""
    from prune_tracker.core.pruning.channels import n_remove

    for widths in ([16] * 9 + [32] * 9 + [64] * 9, [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512]):
        original = {f"l{i}": c for i, c in enumerate(widths)}
        for ratio in (0.05, 0.3, 0.55, 0.9):
            for rounds in (2, 4):
                final = {n: c - n_remove(c, ratio) for n, c in original.items()}
                current, previous = dict(original), 0.0
                for k, target in enumerate(round_targets(ratio, rounds), start=1):
                    wanted = {n: c - n_remove(c, target) for n, c in original.items()}
                    r = one_step_ratio(current, final) if k == rounds else \
                        channel_round_ratio(current, wanted, final, 1 - (1 - target) / (1 - previous))
                    current, previous = {n: c - n_remove(c, r) for n, c in current.items()}, target
                    assert sum(abs(current[n] - wanted[n]) for n in current) <= len(current)  # near each round
                assert current == final, (widths[0], ratio, rounds)


def test_iterative_hybrid_reaches_the_param_reduction(ctx: PruneContext) -> None:
    model = _resnet20()
    result = iterative_prune(get_method("hybrid"), model, 0.7, ctx, RoundPlan(2, 0.5))
    one_shot = get_method("hybrid").prune(model, 0.7, ctx)
    total = sum(p.numel() for p in model.parameters())
    assert abs(result.details["param_reduction"] - one_shot.details["param_reduction"]) * total <= 1
    _check_reload(make_permanent(result.model), "resnet20")


def test_iterative_bad_arguments(ctx: PruneContext) -> None:
    with pytest.raises(ValueError, match="rounds must be an integer >= 1"):
        iterative_prune(get_method("lamp"), _resnet20(), 0.5, ctx, RoundPlan(0, 1.0))
    with pytest.raises(ValueError, match="unknown option"):
        iterative_prune(get_method("lamp"), _resnet20(), 0.5, ctx, RoundPlan(2, 1.0), {"bogus": 1})
