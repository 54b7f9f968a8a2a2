"""quant.measure_precisions (accuracy and bytes per deployment precision) and quant.qat_finetune."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from prune_tracker.core.footprint import footprint_metrics
from prune_tracker.core.models import build_model
from prune_tracker.core.quant import (
    QAT_CHOICES,
    fake_quant_model,
    fake_quantize,
    fold_batch_norm,
    format_bytes,
    int8_activation_bytes,
    measure_precisions,
    qat_finetune,
    quantize_tensor,
    quantize_weights,
    quantized_bytes,
    quantized_layers,
)
from prune_tracker.core.quant.weights import QMAX

BN = nn.modules.batchnorm._BatchNorm


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pruned_resnet20() -> nn.Module:
    """resnet20 with random BN statistics, 60 % of its conv / linear weights randomly zeroed."""
    torch.manual_seed(0)
    model = build_model("resnet20")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BN):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(params, prune.RandomUnstructured, amount=0.6)
    for m, name in params:
        prune.remove(m, name)
    return model.eval()


class _AgreementEvaluate:
    """Fake evaluate: argmax agreement with the fp32 model on two fixed random batches (test / val)."""

    def __init__(self, reference: nn.Module):
        self.batches = {"test_accuracy": _images(8, 10), "val_accuracy": _images(8, 11)}
        with torch.no_grad():
            self.labels = {k: reference(x).argmax(1) for k, x in self.batches.items()}
        self.models: list[nn.Module] = []

    def __call__(self, model: nn.Module) -> dict[str, float]:
        self.models.append(model)
        with torch.no_grad():
            return {k: float((model(x).argmax(1) == self.labels[k]).float().mean()) for k, x in self.batches.items()}


class _Calibration:
    """calibration_batches factory that counts its calls and the batches it serves."""

    def __init__(self):
        self.batches = [(_images(4, seed), torch.zeros(4, dtype=torch.long)) for seed in (20, 21)]
        self.calls = self.served = 0

    def __call__(self):
        self.calls += 1
        for batch in self.batches:
            self.served += 1
            yield batch


def _independent_bytes(model: nn.Module, precision: str) -> dict[str, int]:
    """Per-format totals recomputed from the folded layers with quantize_tensor + format_bytes."""
    folded = fold_batch_norm(model)
    totals = {"dense": 0, "csr": 0, "bitmask": 0, "best": 0}
    weights = set()
    for name, layer in quantized_layers(folded):
        q = quantize_tensor(layer.weight, precision)
        sizes = format_bytes(tuple(layer.weight.shape), int((q.values != 0).sum()), precision)
        totals["dense"] += sizes["dense"]
        totals["csr"] += min(sizes["dense"], sizes["csr"])
        totals["bitmask"] += min(sizes["dense"], sizes["bitmask"])
        totals["best"] += min(sizes.values())
        weights.add(f"{name}.weight")
    other = sum(4 * t.numel() for k, t in folded.state_dict().items() if k not in weights and t.is_floating_point())
    return {k: v + other for k, v in totals.items()}


def test_measure_precisions_accuracy_and_bytes(pruned_resnet20):
    evaluate = _AgreementEvaluate(pruned_resnet20)
    calibration = _Calibration()
    metrics = measure_precisions(pruned_resnet20, ["int4", "fp16"], evaluate, calibration, 4000.0)
    assert calibration.calls == 0  # no int8 requested: no w8a8
    keys = {f"{k}_{p}" for p in ("fp16", "int4") for k in ("test_accuracy", "val_accuracy")}
    keys |= {"footprint_int4_bytes", "footprint_bitmask_int4_bytes", "footprint_csr_int4_bytes",
             "footprint_best_int4_bytes"}
    assert set(metrics) == keys  # fp16's bytes are footprint's metrics: one name per figure
    assert not set(metrics) & set(footprint_metrics())
    for p, t in (("int4", "int4"),):
        expected = _independent_bytes(pruned_resnet20, p)
        assert metrics[f"footprint_best_{t}_bytes"] == quantized_bytes(quantize_weights(pruned_resnet20, p))[
            "total_bytes"] == expected["best"]
        assert metrics[f"footprint_{t}_bytes"] == expected["dense"]
        assert metrics[f"footprint_csr_{t}_bytes"] == expected["csr"]
        assert metrics[f"footprint_bitmask_{t}_bytes"] == expected["bitmask"]
        assert metrics[f"footprint_best_{t}_bytes"] < metrics[f"footprint_{t}_bytes"]
        # the accuracies are evaluate's on the fake-quantised model
        assert {k: metrics[f"{k}_{p}"] for k in evaluate.batches} == evaluate(fake_quant_model(pruned_resnet20, p))
    fp16 = _independent_bytes(pruned_resnet20, "fp16")["best"]
    assert metrics["footprint_best_int4_bytes"] < fp16
    assert {k: metrics[f"{k}_fp16"] for k in evaluate.batches} == evaluate(fake_quant_model(pruned_resnet20, "fp16"))
    assert metrics["test_accuracy_fp16"] > 0.5  # fp16 agrees with fp32 (folding kept the function)
    assert not any(isinstance(m, BN) for m in evaluate.models[0].modules())


def test_measure_w8a8_reads_only_the_calibration_batches(pruned_resnet20):
    evaluate = _AgreementEvaluate(pruned_resnet20)
    calibration = _Calibration()
    peak = 4 * 16 * 32 * 32 * 2 + 3.0
    metrics = measure_precisions(pruned_resnet20, ["int8"], evaluate, calibration, peak)
    assert (calibration.calls, calibration.served) == (1, len(calibration.batches))
    assert len(evaluate.models) == 2  # int8 weights only, then w8a8
    # the input quantiser's observed range is exactly that of the calibration images
    observed = evaluate.models[1].input_quantizer
    images = torch.cat([x for x, _ in calibration.batches])
    assert (float(observed.low), float(observed.high)) == (float(images.min()), float(images.max()))
    assert {"test_accuracy_w8a8", "val_accuracy_w8a8"} <= set(metrics)
    assert metrics["activation_peak_int8_bytes"] == int8_activation_bytes(peak)
    assert metrics["total_w8a8_bytes"] == metrics["footprint_best_int8_bytes"] + int8_activation_bytes(peak)
    with pytest.raises(ValueError, match="activation_peak_fp32_bytes"):
        measure_precisions(pruned_resnet20, ["int8"], evaluate, calibration)


def test_measure_rejects_unknown_precision(pruned_resnet20):
    with pytest.raises(ValueError, match="'fp8'.*fp16, int8, int4"):
        measure_precisions(pruned_resnet20, ["int8", "fp8"], lambda m: {})


# --- QAT fine-tuning -----------------------------------------------------------------------------------


def _tiny_masked_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    prune.random_unstructured(net[0], "weight", amount=0.5)
    return net


def _sgd_finetune(seen: dict[str, list[torch.Tensor]]):
    """Fake finetune: 3 SGD steps; records the effective weights each forward uses and the callbacks."""

    def finetune(model: nn.Module, epochs: float, step_callback=None) -> None:
        hooks = [layer.register_forward_pre_hook(lambda m, _a, name=name: seen[name].append(m.weight.detach()))
                 for name, layer in (("conv", model[0]), ("linear", model[4]))]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(3)
        for step in range(int(epochs)):
            optimizer.zero_grad()
            model(torch.randn(4, 3, 8, 8, generator=g)).pow(2).mean().backward()
            optimizer.step()
            if step_callback is not None:
                step_callback(step, int(epochs))
        for hook in hooks:
            hook.remove()

    return finetune


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_qat_finetune_trains_on_fake_quantised_weights(precision):
    net = _tiny_masked_net()
    mask = net[0].weight_mask.clone()
    before = net[0].weight_orig.detach().clone()
    seen: dict[str, list[torch.Tensor]] = {"conv": [], "linear": []}
    steps: list[int] = []
    qat_finetune(_sgd_finetune(seen), precision)(net, 3, step_callback=lambda step, total: steps.append(step))
    assert steps == [0, 1, 2] and all(len(w) == 3 for w in seen.values())
    levels = 2 * QMAX[precision] + 1  # symmetric: <= 2^b - 1 levels per channel
    for weights in seen.values():
        for w in weights:
            assert all(len(row.unique()) <= levels for row in w.reshape(len(w), -1))
            assert torch.equal(w, fake_quantize(w, precision))  # already on the per-channel grid
    assert all(torch.all(w[mask == 0] == 0) for w in seen["conv"])
    # after: plain layers, masks kept, latent fp32 weights (trained, and off the grid)
    conv, linear = net[0], net[4]
    assert not parametrize.is_parametrized(conv) and not parametrize.is_parametrized(linear)
    assert isinstance(conv.weight_orig, nn.Parameter) and isinstance(linear.weight, nn.Parameter)
    assert torch.equal(conv.weight_mask, mask)
    assert not torch.equal(conv.weight_orig.detach(), before)
    assert not torch.equal(linear.weight.detach(), fake_quantize(linear.weight.detach(), precision))
    assert set(net.state_dict()) == set(_tiny_masked_net().state_dict())


def test_qat_finetune_removes_qat_when_finetune_raises():
    net = _tiny_masked_net()

    def failing(model, epochs, step_callback=None):
        assert parametrize.is_parametrized(model[4])
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        qat_finetune(failing, "int8")(net, 1)
    assert not any(parametrize.is_parametrized(m) for m in net.modules())


def test_qat_finetune_none_and_validation():
    finetune = _sgd_finetune({"conv": [], "linear": []})
    assert QAT_CHOICES == ("none", "int8", "int4")
    assert qat_finetune(finetune, "none") is finetune
    with pytest.raises(ValueError) as error:
        qat_finetune(finetune, "fp8")
    message = str(error.value)
    assert "'fp8'" in message and "\n" not in message and all(c in message for c in QAT_CHOICES)
