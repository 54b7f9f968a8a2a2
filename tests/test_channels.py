"""Stage-width channel pruning of option-A CIFAR ResNets (`scope` option) and the `fm_norm` method.

Random-weight models, synthetic 16x16 images (CIFAR ResNets pool globally), CPU, seconds."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prune_tracker.core.footprint import measure_footprint
from prune_tracker.core.models import architecture_spec, build_from_spec, build_model, count_params
from prune_tracker.core.pruning import PruneContext, channels_per_layer, get_method
from prune_tracker.core.pruning import stages as stages_mod
from prune_tracker.core.pruning.stages import cifar_stages, cut_stages, scoped_param_count

SCOPED = ("li_filters", "thinet", "random_channels", "hybrid", "fm_norm")
FAST = {"thinet": {"samples": 1600, "per_image": 100}, "fm_norm": {"samples": 16}}  # 16 images, 100 rows each


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


def make_ctx(size: int = 16, n: int = 16, batches: int = 2) -> PruneContext:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    step = max(n // batches, 1)

    def calibration():
        for i in range(0, n, step):
            yield images[i:i + step], labels[i:i + step]

    return PruneContext(example_input=images[:1], calibration_batches=calibration, evaluate=lambda _m: 0.0,
                        finetune=lambda *_a, **_k: None, log=lambda _msg: None)


def _model(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch).eval()
    with torch.no_grad():  # non-trivial BN statistics and affine terms, so a wrong cut shows in the output;
        for name, m in model.named_modules():  # small residual-branch gains keep deep nets' logits O(1)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.1, 0.3) if name.endswith("bn2") else m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(0.1, 0.3)  # positive: few channels are dead (all-zero after ReLU) by chance
    return model


def _widths(model: nn.Module) -> list[int]:
    return [model.layer1[0].bn2.num_features, model.layer2[0].bn2.num_features, model.layer3[0].bn2.num_features]


def _zero_stage_channel(model: nn.Module, stage: int, q: int) -> None:
    """Every tensor that writes channel q of the stage: stem (stage 1) and each block's conv2/bn2."""
    seq = (model.layer1, model.layer2, model.layer3)[stage]
    writers = [(b.conv2, b.bn2) for b in seq] + ([(model.conv1, model.bn1)] if stage == 0 else [])
    for conv, bn in writers:
        conv.weight[q] = 0
        bn.weight[q] = 0
        bn.bias[q] = 0


@torch.no_grad()
def _zero_chains(model: nn.Module, seed: int = 0) -> list[list[int]]:
    """Zero half the channels of every stage such that each removed channel's output is exactly zero: a
    channel the zero-pad shortcut carries into the next stage is zeroed there too (its image at offset
    (C_next - C) // 2); the next stage's other half is taken evenly from the padded channels below and
    above that band. Returns the zeroed channels per stage."""
    gen = torch.Generator().manual_seed(seed)
    widths = _widths(model)
    zeroed: list[list[int]] = []
    for s, c in enumerate(widths):
        if s == 0:
            picked = torch.randperm(c, generator=gen)[: c // 2].tolist()
        else:
            off, band = (c - widths[s - 1]) // 2, widths[s - 1]
            images = [q + off for q in zeroed[-1]]
            below = torch.randperm(off, generator=gen)[: off // 2].tolist()
            above = (off + band + torch.randperm(c - off - band, generator=gen)[: (c - off - band) // 2]).tolist()
            picked = images + below + above
        assert len(picked) == c // 2
        zeroed.append(sorted(picked))
        for q in picked:
            _zero_stage_channel(model, s, q)
    return zeroed


@torch.no_grad()
def _zero_block_channels(model: nn.Module, seed: int = 1) -> dict[str, list[int]]:
    """Zero half of every block's conv1 channels (BN gamma and beta too: relu(0) = 0 reaches conv2); the
    other half gets a BN bias of 1, so that none of them is dead (all-zero after ReLU) by chance."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, block in model.named_modules():
        if hasattr(block, "conv1") and hasattr(block, "conv2") and name:
            c = block.conv1.out_channels
            idx = sorted(torch.randperm(c, generator=gen)[: c // 2].tolist())
            block.conv1.weight[idx] = 0
            block.bn1.weight[idx] = 0
            block.bn1.bias.fill_(1.0)
            block.bn1.bias[idx] = 0
            out[f"{name}.conv1"] = idx
    return out


@torch.no_grad()
def _dead_block_channels(model: nn.Module, ctx: PruneContext) -> dict[str, set[int]]:
    """Block conv1 name -> channels whose map (what conv2 reads) is zero on every calibration image."""
    peaks: dict[str, torch.Tensor] = {}
    handles = []
    for name, block in model.named_modules():
        if hasattr(block, "conv1") and hasattr(block, "conv2") and name:
            def hook(_m, args, key=f"{name}.conv1"):
                peak = args[0].abs().amax(dim=(0, 2, 3))
                peaks[key] = torch.maximum(peaks[key], peak) if key in peaks else peak
            handles.append(block.conv2.register_forward_pre_hook(hook))
    for images, _ in ctx.calibration_batches():
        model.eval()(images)
    for h in handles:
        h.remove()
    return {name: set(torch.nonzero(peak == 0).flatten().tolist()) for name, peak in peaks.items()}


def _expected_stage_spec(model: nn.Module, arch: str, old_to_new: dict[int, int]) -> dict:
    """The spec of `model` with every stage-level width (block outputs, stem, the inputs that read them,
    fc) mapped through `old_to_new`; block-internal widths (conv1 out, bn1, conv2 in) unchanged."""
    spec = copy.deepcopy(architecture_spec(model, arch, 10))
    for name, layer in spec["layers"].items():
        if layer["type"] == "Conv2d":
            if not name.endswith(".conv1"):  # the stem and every conv2 write stage channels
                layer["out_channels"] = old_to_new[layer["out_channels"]]
            if name != "conv1" and not name.endswith(".conv2"):  # every block conv1 reads them
                layer["in_channels"] = old_to_new[layer["in_channels"]]
        elif layer["type"] == "Linear":
            layer["in_features"] = old_to_new[layer["in_features"]]
        elif not name.endswith(".bn1"):  # the stem's bn1 and every bn2
            layer["num_features"] = old_to_new[layer["num_features"]]
    return spec


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_stage_scope_lowers_activation_peak_and_params() -> None:
    model = _model("resnet20")
    result = get_method("li_filters").prune(model, 0.5, make_ctx(), scope="stage")
    small = (3, 16, 16)  # the peak is at the first stage's block outputs at any input size; 16x16 is cheaper
    before, after = (measure_footprint(m, input_shape=small).metrics for m in (model, result.model))
    assert after["activation_peak_fp32_bytes"] < before["activation_peak_fp32_bytes"]
    assert after["params_total"] < before["params_total"]
    block = get_method("li_filters").prune(model, 0.5, make_ctx())  # today's scope leaves the peak alone
    peak = measure_footprint(block.model, input_shape=small).metrics["activation_peak_fp32_bytes"]
    assert peak == before["activation_peak_fp32_bytes"]


@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_stage_cut_changes_exactly_the_stage_widths(ratio: float) -> None:
    model = _model("resnet20")
    result = get_method("li_filters").prune(model, ratio, make_ctx(), scope="stage")
    widths = _widths(model)
    new = {c: c - int(round(c * ratio)) for c in widths}
    assert [result.details["stages"][n]["channels_after"] for n in ("layer1", "layer2", "layer3")] == [
        new[c] for c in widths]
    expected = _expected_stage_spec(model, "resnet20", new)
    assert architecture_spec(result.model, "resnet20", 10) == expected
    assert count_params(result.model) == count_params(build_from_spec(expected))  # exact parameter drop
    assert count_params(result.model) == scoped_param_count(model, ratio, "stage")
    assert _outputs(result.model, torch.randn(2, 3, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("arch", ["resnet20", "resnet32", "resnet56"])
def test_cutting_zero_channels_keeps_the_output(arch: str) -> None:
    model = _model(arch)
    zeroed = _zero_chains(model)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    result = get_method("li_filters").prune(model, 0.5, make_ctx(), scope="stage")
    stages = result.details["stages"]
    for name, c, z in zip(("layer1", "layer2", "layer3"), _widths(model), zeroed, strict=True):
        assert stages[name]["kept_channels"] == [q for q in range(c) if q not in z]
    torch.testing.assert_close(_outputs(result.model, x), _outputs(model, x), atol=1e-5, rtol=0)
    assert count_params(result.model) < count_params(model)


@pytest.mark.parametrize("method", ["fm_norm", "thinet", "li_filters"])
def test_scope_all_removes_the_zero_channels_of_each_method(method: str) -> None:
    model = _model("resnet20")
    zeroed = _zero_chains(model)
    zero_block = _zero_block_channels(model)
    dead = _dead_block_channels(model, make_ctx())  # zeroed ones, and any a layer's input makes all-zero
    assert all(set(z) <= dead[name] for name, z in zero_block.items())
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    result = get_method(method).prune(model, 0.5, make_ctx(), scope="all", **FAST.get(method, {}))
    for name, z in zip(("layer1", "layer2", "layer3"), zeroed, strict=True):
        assert not set(result.details["stages"][name]["kept_channels"]) & set(z)
    for name, z in zero_block.items():  # the data-driven methods may equally drop a channel dead on the data
        removed = set(range(model.get_submodule(name).out_channels)) - set(result.details["kept_channels"][name])
        assert removed == set(z) if method == "li_filters" else removed <= dead[name]
    torch.testing.assert_close(_outputs(result.model, x), _outputs(model, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scope", ["stage", "all"])
def test_pruned_model_rebuilds_from_spec(scope: str) -> None:
    model = _model("resnet20")
    pruned = get_method("random_channels").prune(model, 0.5, make_ctx(), scope=scope).model.eval()
    clone = build_from_spec(architecture_spec(pruned, "resnet20", 10))
    clone.load_state_dict(pruned.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_outputs(clone, x), _outputs(pruned, x))
    assert count_params(pruned) == scoped_param_count(model, 0.5, scope)


def test_mis_prune_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("resnet20")
    widths = _widths(model)
    with pytest.raises(RuntimeError, match="zero-pad shortcut"):  # stage-1 channel cut, its image kept
        cut_stages(copy.deepcopy(model), [[0], [], []], torch.randn(1, 3, 16, 16))
    off2, off3 = (widths[1] - widths[0]) // 2, (widths[2] - widths[1]) // 2
    # a consistent plan: stage-1 channel 0 and its images downstream, stage-2 padded channel 0 and its image
    removed = [[0], [0, off2], [off3, off3 + off2]]
    ok = copy.deepcopy(model)
    cut_stages(ok, removed, torch.randn(1, 3, 16, 16))
    assert _widths(ok) == [widths[0] - 1, widths[1] - 2, widths[2] - 2]
    real_slice_in = stages_mod._slice_in
    monkeypatch.setattr(stages_mod, "_slice_in",  # a cut that forgets the layers reading the stage
                        lambda m, keep: real_slice_in(m, keep) if isinstance(m, nn.Linear) else None)
    with pytest.raises(RuntimeError, match="mis-prune"):
        cut_stages(copy.deepcopy(model), removed, torch.randn(1, 3, 16, 16))


@pytest.fixture(scope="module")
def other_archs() -> dict[str, nn.Module]:
    return {arch: build_model(arch) for arch in ("vgg11_bn", "resnet18")}


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18"])
@pytest.mark.parametrize("method", SCOPED)
@pytest.mark.parametrize("scope", ["stage", "all"])
def test_stage_scope_refused_without_option_a_stages(arch: str, method: str, scope: str, other_archs) -> None:
    model = other_archs[arch]  # prune() copies it before the scope check
    with pytest.raises(ValueError, match=rf"scope={scope} .*{type(model).__name__}.*use scope=block") as err:
        get_method(method).prune(model, 0.5, make_ctx(size=32, n=2), scope=scope)
    assert "\n" not in str(err.value)


def test_vgg_block_scope_is_the_default() -> None:
    torch.manual_seed(0)
    model = build_model("vgg11_bn").eval()
    ctx = make_ctx(size=32, n=2)
    default = get_method("li_filters").prune(model, 0.5, ctx).model
    block = get_method("li_filters").prune(model, 0.5, ctx, scope="block").model
    assert architecture_spec(default, "vgg11_bn", 10) == architecture_spec(block, "vgg11_bn", 10)
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), block.state_dict().values(),
                                                 strict=True))
    assert channels_per_layer(block) != channels_per_layer(model)


def test_hybrid_stage_scope_reaches_the_parameter_target() -> None:
    model = _model("resnet20")
    ratio = 0.6
    result = get_method("hybrid").prune(model, ratio, make_ctx(), scope="stage")
    pruned = result.model
    masked = sum(int((m.weight_mask == 0).sum()) for m in pruned.modules() if hasattr(m, "weight_mask"))
    assert abs(count_params(pruned) - masked - (1 - ratio) * count_params(model)) <= 1
    assert _widths(pruned) != _widths(model)
    assert result.details["stages"]["layer1"]["channels_after"] < _widths(model)[0]


def test_fm_norm_removes_the_channels_whose_maps_are_zero() -> None:
    model = _model("resnet20")
    dead = [2, 5, 11, 13]
    with torch.no_grad():  # conv weights untouched (L1 ranks them as any other); BN silences them
        model.layer1[1].bn1.weight[dead] = 0
        model.layer1[1].bn1.bias[dead] = 0
    result = get_method("fm_norm").prune(model, 0.25, make_ctx(), samples=16)
    kept = result.details["kept_channels"]["layer1.1.conv1"]
    assert kept == [q for q in range(16) if q not in dead]
    tiny = _model("resnet20")
    with torch.no_grad():
        tiny.layer2[0].bn1.weight[dead] *= 1e-3
        tiny.layer2[0].bn1.bias[dead] = 0
    result = get_method("fm_norm").prune(tiny, len(dead) / 32, make_ctx(), samples=16)
    assert sorted(set(range(32)) - set(result.details["kept_channels"]["layer2.0.conv1"])) == dead


def test_fm_norm_needs_calibration_images() -> None:
    ctx = make_ctx()
    empty = PruneContext(example_input=ctx.example_input, calibration_batches=lambda: iter([]),
                         evaluate=ctx.evaluate, finetune=ctx.finetune, log=ctx.log)
    for scope in ("block", "stage"):
        with pytest.raises(ValueError, match="fm_norm: calibration_batches yielded no images") as err:
            get_method("fm_norm").prune(_model("resnet20"), 0.5, empty, scope=scope)
        assert "\n" not in str(err.value)


def test_stage_structure_of_resnet56() -> None:
    stages = cifar_stages(build_model("resnet56"))
    blocks = len(stages[0].blocks)
    assert [len(s.producers) for s in stages] == [blocks + 1, blocks, blocks]  # + stem for stage 1
    assert [len(s.consumers) for s in stages] == [blocks + 1, blocks, blocks]  # next first conv1 / fc
    assert stages[-1].consumers[-1][0] == "fc" and stages[0].pad_in is None and stages[-1].pad_out is None
