"""Quantised deployment formats: BN folding, int8 / int4 weights, bytes per format, w8a8, QAT, the file."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import prune

from prune_tracker.core.footprint.trace import run_trace
from prune_tracker.core.models import architecture_spec, build_model
from prune_tracker.core.quant import (
    FORMAT,
    PRECISIONS,
    QUANT_FILE_NAME,
    artifact_dir_name,
    calibrate_w8a8,
    channel_scales,
    conv_bn_pairs,
    disable_qat,
    enable_qat,
    fake_quant_model,
    fake_quantize,
    fold_batch_norm,
    format_bytes,
    int8_activation_bytes,
    load_quantized,
    model_bytes,
    quantize_tensor,
    quantize_weights,
    quantized_bytes,
    save_quantized,
    validate_precision,
)
from prune_tracker.core.quant.activations import affine_qparams
from prune_tracker.core.quant.container import (
    ByteReader,
    decode_weight,
    encode_weight,
    pack_header,
    pack_values,
    unpack_header,
    unpack_values,
)
from prune_tracker.core.quant.fold import named_conv_bn_pairs, traced_conv_bn_pairs
from prune_tracker.core.quant.formats import tensor_bytes_row
from prune_tracker.core.quant.weights import QMAX

BN = nn.modules.batchnorm._BatchNorm


def _random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BN):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.randn(n, generator=g))  # negative gammas too
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def _images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def _prune_globally(model: nn.Module, amount: float) -> nn.Module:
    torch.manual_seed(0)
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(params, prune.RandomUnstructured, amount=amount)
    for m, name in params:
        prune.remove(m, name)
    return model


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


@pytest.fixture(scope="module")
def resnet20() -> nn.Module:
    torch.manual_seed(0)
    return _random_bn(build_model("resnet20"))


@pytest.fixture(scope="module")
def sparse_resnet20(resnet20) -> nn.Module:
    model = build_model("resnet20")
    model.load_state_dict(resnet20.state_dict())
    return _prune_globally(model, 0.8).eval()


# --- BatchNorm folding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet20", "vgg11_bn"])
def test_fold_keeps_fp32_outputs(arch):
    torch.manual_seed(0)
    model = _random_bn(build_model(arch))
    x = _images()
    with torch.no_grad():
        ref = model(x)
        folded = fold_batch_norm(model)
        out = folded(x)
    assert not any(isinstance(m, BN) for m in folded.modules())
    assert any(isinstance(m, BN) for m in model.modules())  # the caller's model is untouched
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_fold_keeps_masked_zeros(resnet20):
    model = build_model("resnet20")
    model.load_state_dict(resnet20.state_dict())
    prune.random_unstructured(model.layer2[0].conv1, "weight", amount=0.5)
    mask = model.layer2[0].conv1.weight_mask.clone()
    folded = fold_batch_norm(model.eval())
    weight = folded.layer2[0].conv1.weight
    assert torch.equal(weight == 0, mask == 0)
    assert not hasattr(folded.layer2[0].conv1, "weight_mask")


@pytest.mark.parametrize("arch", ["resnet20", "vgg11_bn", "resnet18"])
def test_traced_pairs_match_naming_rule(arch):
    model = build_model(arch)
    traced = traced_conv_bn_pairs(model)
    assert sorted(traced) == sorted(named_conv_bn_pairs(model))
    assert len(traced) == sum(isinstance(m, BN) for m in model.modules())


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x))
        return out if x.sum() > 0 else -out  # data-dependent control flow: fx cannot trace it


def test_fold_falls_back_to_names_when_fx_fails():
    model = _random_bn(_Untraceable())
    with pytest.raises(Exception):  # noqa: B017  (fx raises TraceError or TypeError, depending on the version)
        traced_conv_bn_pairs(model)
    assert conv_bn_pairs(model) == [("conv1", "bn1")]
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(fold_batch_norm(model)(x), model(x), rtol=1e-4, atol=1e-5)


# --- weight quantisation -------------------------------------------------------------------------------


def test_validate_precision_names_bad_value_and_allowed():
    with pytest.raises(ValueError) as error:
        validate_precision("int3")
    message = str(error.value)
    assert "'int3'" in message and "\n" not in message
    assert all(p in message for p in PRECISIONS)
    assert [validate_precision(p) for p in PRECISIONS] == list(PRECISIONS)


def _sparse_weight(shape: tuple[int, ...] = (8, 4, 3, 3), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) > 0.4)
    weight[3] = 0  # an all-zero channel
    return weight


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_levels_zeros_and_fp16_scales(precision):
    weight = _sparse_weight()
    q = quantize_tensor(weight, precision)
    qmax = QMAX[precision]
    levels = q.values.reshape(len(weight), -1)
    assert q.values.dtype == torch.int8 and q.scales.dtype == torch.float16
    assert all(len(row.unique()) <= 2 * qmax + 1 for row in levels)
    assert torch.all(q.values[weight == 0] == 0)
    assert torch.all(levels[3] == 0) and float(q.scales[3]) > 0
    live = [i for i in range(len(weight)) if i != 3]
    assert torch.all(levels[live].abs().amax(dim=1) == qmax)  # the channel's amax maps to the top level
    # the scale applied is the fp16-rounded amax / qmax: levels and dequantised values follow from it
    flat = weight.reshape(len(weight), -1)
    scales16 = (flat.abs().amax(dim=1) / qmax).half()
    assert torch.equal(q.scales[live], scales16[live])
    reference = torch.clamp(torch.round(flat[live] / scales16[live, None].float()), -qmax, qmax)
    assert torch.equal(levels[live].float(), reference)
    # dequantised = level * fp16 scale, equal to the fake-quant weight
    assert torch.equal(q.dequantize(), fake_quantize(weight, precision))
    error = (q.dequantize() - weight).reshape(len(weight), -1).abs().amax(dim=1)
    assert torch.all(error <= q.scales.float() / 2 * (1 + 1e-6))


def test_fp16_is_a_cast():
    weight = _sparse_weight()
    q = quantize_tensor(weight, "fp16")
    assert q.scales is None and q.values.dtype == torch.float16
    assert torch.equal(q.dequantize(), weight.half().float())


def test_fake_quant_model_error_small(sparse_resnet20):
    x = _images()
    with torch.no_grad():
        ref = fold_batch_norm(sparse_resnet20)(x)
        errors = {p: _rel_error(fake_quant_model(sparse_resnet20, p)(x), ref) for p in PRECISIONS}
    assert errors["fp16"] < errors["int8"] < errors["int4"]
    assert errors["int8"] < 0.05
    quantized = quantize_weights(sparse_resnet20, "int4")
    for name, layer in quantized.model.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            original = sparse_resnet20.get_submodule(name).weight
            assert torch.equal(layer.weight, quantized.weights[f"{name}.weight"].dequantize())
            assert torch.all(layer.weight[original == 0] == 0)


# --- bytes per format ----------------------------------------------------------------------------------


@pytest.mark.parametrize("precision,expected", [("int8", 3148), ("int4", 1700)])
def test_model_bytes_counted_by_hand(precision, expected):
    """A literal, not the code under test: two 3x3 convs (3->16, 16->16, no bias) with BatchNorm, then Linear(16, 10).
    Folded: 432 + 2,304 + 160 weights (1 or 1/2 byte each), 16 + 16 + 10 fp32 biases (168 B), one fp16 scale per
    output channel (42 x 2 = 84 B): int8 2,896 + 168 + 84 = 3,148 B; int4 1,448 + 168 + 84 = 1,700 B."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    assert model_bytes(model, precision)["total_bytes"] == expected


def test_int4_odd_count_rounds_up():
    # 15 values x 4 bits = 7.5 -> 8 bytes, + 3 fp16 scales
    assert format_bytes((3, 5), 15, "int4")["dense"] == 8 + 3 * 2


def test_all_zero_rows_choose_csr():
    # (4, 27) matrix, 5 non-zeros all in one row; int4: ceil(5 / 2) = 3 value bytes; 4 fp16 scales = 8
    sizes = format_bytes((4, 3, 3, 3), 5, "int4")
    assert sizes == {
        "dense": 108 // 2 + 8,
        "csr": 3 + 5 * 1 + 5 * 1 + 8,  # uint8 column indices (cols 27), 5 uint8 row pointers
        "bitmask": 3 + math.ceil(108 / 8) + 8,
    }
    weight = torch.zeros(4, 3, 3, 3)
    weight[1].view(-1)[:5] = torch.tensor([1.0, -2.0, 3.0, -4.0, 7.0])
    row = tensor_bytes_row("w", quantize_tensor(weight, "int4"))
    assert row["nonzeros"] == 5 and row["chosen"] == "csr" and row["best"] == sizes["csr"]


def test_dense_rows_choose_bitmask():
    # (2, 300) int8, 200 non-zeros: uint16 column indices (cols 300), uint8 row pointers (nnz 200)
    sizes = format_bytes((2, 300), 200, "int8")
    assert sizes == {"dense": 600 + 4, "csr": 200 + 200 * 2 + 3 * 1 + 4, "bitmask": 200 + 600 // 8 + 4}
    assert format_bytes((2, 300), 200, "fp16") == {"dense": 1200, "csr": 400 + 400 + 3, "bitmask": 400 + 75}


def test_levels_rounded_to_zero_are_not_stored():
    weight = torch.tensor([[1.0, 0.001, 0.0, -0.5]])
    row = tensor_bytes_row("w", quantize_tensor(weight, "int4"))
    assert row["nonzeros"] == 2  # 0.001 < scale / 2 rounds to level 0


def test_int8_activation_bytes():
    assert int8_activation_bytes(4 * 1000 + 1) == 1001


# --- packing and encodings -----------------------------------------------------------------------------


def test_int4_packing_low_nibble_first():
    assert pack_values(np.array([1, -1], dtype=np.int8), "int4").tolist() == [0xF1]
    values = np.arange(-7, 8, dtype=np.int8)  # 15 values: odd
    packed = pack_values(values, "int4")
    assert len(packed) == 8
    assert np.array_equal(unpack_values(packed, len(values), "int4"), values)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("encoding", ["dense", "csr", "bitmask"])
def test_encodings_round_trip(precision, encoding):
    weight = _sparse_weight((6, 3, 3, 3))
    q = quantize_tensor(weight, precision)
    sections = encode_weight(q, encoding)
    data = np.concatenate(sections)
    nnz = int((q.values != 0).sum())
    assert len(data) == format_bytes(tuple(weight.shape), nnz, precision)[encoding]
    reader = ByteReader(data)
    decoded = decode_weight(reader, tuple(weight.shape), encoding, nnz, precision)
    assert reader.offset == len(data)
    assert torch.equal(decoded, q.dequantize())


# --- w8a8 ----------------------------------------------------------------------------------------------


class _CountingBatches:
    def __init__(self, batches: list):
        self.batches, self.passes, self.served = batches, 0, 0

    def __iter__(self):
        self.passes += 1
        for batch in self.batches:
            self.served += 1
            yield batch


def test_calibration_reads_only_the_batches_given(resnet20):
    batches = _CountingBatches([(_images(4, seed), torch.zeros(4)) for seed in (2, 3, 4)])
    w8a8 = calibrate_w8a8(resnet20, batches)
    assert (batches.passes, batches.served) == (1, 3)
    louder = calibrate_w8a8(resnet20, [(3 * b[0], b[1]) for b in batches.batches])
    assert float(louder.input_quantizer.scale) > float(w8a8.input_quantizer.scale)
    x = _images()
    with torch.no_grad():
        ref = resnet20(x)
        assert _rel_error(w8a8(x), ref) < 0.05
        assert not torch.equal(w8a8(x), fake_quant_model(resnet20, "int8")(x))  # activations are quantised
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_w8a8(resnet20, [])


def _w8a8_outputs(w8a8, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(op, tensor) for every op output the w8a8 model hands on, in call order, recorded around `on_output`."""
    seen = []
    real = w8a8.on_output

    def recording(index, func, out):
        result = real(index, func, out)
        seen.append((w8a8.quantizers[index].op, result.clone()))
        return result

    w8a8.on_output = recording
    try:
        w8a8(x)
    finally:
        del w8a8.on_output
    return seen


def _on_grid(tensor: torch.Tensor, quantizer) -> bool:
    levels = tensor / quantizer.scale + quantizer.zero_point
    return bool(torch.allclose(levels, levels.round(), atol=1e-3)) and int(levels.round().min()) >= 0 \
        and int(levels.round().max()) <= 255


def test_w8a8_quantises_every_activation_its_bytes_count(resnet20):
    """total_w8a8_bytes counts every activation the footprint's tracker sees at one byte: the simulation quantises
    exactly those tensors (the input, each conv / ReLU / residual add / shortcut pad / pooling output), the logits
    excepted, and each value it hands on lies on its tensor's uint8 grid."""
    batches = [_images(8, seed) for seed in (5, 6)]
    w8a8 = calibrate_w8a8(resnet20, batches)
    counted = [r for r in run_trace(fold_batch_norm(resnet20), (3, 32, 32), 1).records if r["new_fp32_bytes"] > 0]
    assert len(w8a8.quantizers) == len(counted)  # one per counted op output (the input image has its own)
    assert [q.op for q in w8a8.quantizers].count("add") == 9  # ResNet-20's residual adds
    assert {"pad", "adaptive_avg_pool2d", "relu", "conv2d"} <= set(w8a8.quantized_ops)
    assert w8a8.quantizers[w8a8.output_index].op == "linear" and "linear" not in w8a8.quantized_ops
    x = _images(4, 9)
    with torch.no_grad():
        for index, (op, tensor) in enumerate(_w8a8_outputs(w8a8, x)):
            if index != w8a8.output_index:
                assert _on_grid(tensor, w8a8.quantizers[index]), f"op #{index} ({op}) is not quantised"
    assert _on_grid(w8a8.input_quantizer(x), w8a8.input_quantizer)


def test_w8a8_in_place_ops_and_a_changing_graph():
    """torchvision-style in-place ReLU / add are quantised in place; a forward that runs other ops than calibration
    saw is refused, not silently mis-quantised."""

    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)

        def forward(self, x):
            out = self.conv(x)
            out += x.mean(1, keepdim=True)
            return self.fc(torch.relu_(out).mean((2, 3)))

    torch.manual_seed(0)
    w8a8 = calibrate_w8a8(InPlace().eval(), [_images(4, 1)])
    assert {"add_", "relu_"} <= set(w8a8.quantized_ops)
    with torch.no_grad():
        for index, (op, tensor) in enumerate(_w8a8_outputs(w8a8, _images(2, 2))):
            if index != w8a8.output_index:
                assert _on_grid(tensor, w8a8.quantizers[index]), op

    class Switching(InPlace):
        def forward(self, x):
            return super().forward(x) if x.shape[0] > 2 else self.fc(self.conv(x).mean((2, 3)))

    switching = calibrate_w8a8(Switching().eval(), [_images(4, 1)])
    with torch.no_grad(), pytest.raises(RuntimeError, match="not static"):
        switching(_images(2, 2))


def test_scales_keep_torch_ao_observer_semantics():
    """The tensor math that replaced torch.ao's observers: amax / qmax (an all-zero channel gets the fp32 epsilon,
    stored in fp16), and MinMaxObserver's affine uint8 parameters (the range widened to hold 0)."""
    weight = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [0.25, 0.1, -0.05]])
    expected = torch.tensor([2 / 127, torch.finfo(torch.float32).eps, 0.25 / 127]).to(torch.float16)
    assert torch.equal(channel_scales(weight, "int8"), expected)
    assert torch.equal(channel_scales(weight, "int4"), torch.tensor([2 / 7, torch.finfo(torch.float32).eps,
                                                                     0.25 / 7]).to(torch.float16))
    scale, zero_point = affine_qparams(torch.tensor(-1.0), torch.tensor(3.0))
    assert torch.equal(scale, torch.tensor([4 / 255])) and zero_point.tolist() == [64]  # round(63.75)
    scale, zero_point = affine_qparams(torch.tensor(0.5), torch.tensor(2.0))  # widened to [0, 2]
    assert torch.equal(scale, torch.tensor([2 / 255])) and zero_point.tolist() == [0]


# --- QAT -----------------------------------------------------------------------------------------------


def test_qat_straight_through_gradient():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    latent = layer.weight
    x = torch.randn(5, 6)
    enable_qat(layer, "int4")
    layer(x).pow(2).sum().backward()
    quantized = fake_quantize(latent.detach(), "int4").requires_grad_()
    nn.functional.linear(x, quantized, layer.bias.detach()).pow(2).sum().backward()
    assert layer.parametrizations.weight.original is latent
    assert torch.allclose(latent.grad, quantized.grad)
    assert all(len(row.unique()) <= 15 for row in layer.weight)


def test_qat_keeps_masked_zeros_and_removes_cleanly():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    prune.random_unstructured(conv, "weight", amount=0.5)
    mask = conv.weight_mask.clone()
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    before = conv.weight_orig.detach().clone()
    enable_qat(conv, "int8")
    for _ in range(3):
        optimizer.zero_grad()
        conv(torch.randn(2, 3, 8, 8)).pow(2).mean().backward()
        optimizer.step()
        assert torch.all(conv.weight[mask == 0] == 0)
    conv(torch.randn(1, 3, 8, 8))  # refresh prune's weight from the trained parameters
    assert all(len(row.unique()) <= 255 for row in conv.weight.detach().reshape(4, -1))
    assert not torch.equal(conv.parametrizations.weight_orig.original.detach(), before)
    disable_qat(conv)
    prune.remove(conv, "weight")
    assert type(conv) is nn.Conv2d and isinstance(conv.weight, nn.Parameter)
    assert set(conv.state_dict()) == {"weight", "bias"}
    assert torch.all(conv.weight[mask == 0] == 0)


@pytest.mark.parametrize("keep_quantized", [False, True])
def test_disable_qat_keeps_latent_or_quantised_weights(keep_quantized):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    latent = conv.weight.detach().clone()
    enable_qat(conv, "int4")
    disable_qat(conv, keep_quantized=keep_quantized)
    assert type(conv) is nn.Conv2d and isinstance(conv.weight, nn.Parameter)
    expected = fake_quantize(latent, "int4") if keep_quantized else latent
    assert torch.equal(conv.weight.detach(), expected)


# --- deployable file -----------------------------------------------------------------------------------


def _header_bytes(path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_file_round_trip_on_pruned_resnet20(sparse_resnet20, precision, tmp_path):
    spec = architecture_spec(sparse_resnet20, "resnet20", 10)
    path = tmp_path / f"resnet20_{precision}.safetensors"
    info = save_quantized(sparse_resnet20, spec, precision, path)
    loaded, loaded_spec = load_quantized(path)
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), fake_quant_model(sparse_resnet20, precision)(x), rtol=0, atol=1e-6)
    assert loaded_spec == spec
    computed = quantized_bytes(quantize_weights(sparse_resnet20, precision))["total_bytes"]
    assert info["computed_bytes"] == computed == info["data_bytes"]
    assert path.stat().st_size == _header_bytes(path) + computed
    assert {r["chosen"] for r in info["tensors"]} <= {"csr", "bitmask"}  # 80 % sparse: never dense


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse80"])
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_file_size_close_to_computed_bytes(resnet20, sparse_resnet20, sparse, precision, tmp_path):
    model = sparse_resnet20 if sparse else resnet20
    spec = architecture_spec(model, "resnet20", 10)
    path = tmp_path / "m.safetensors"
    info = save_quantized(model, spec, precision, path)
    assert info["computed_bytes"] == quantized_bytes(quantize_weights(model, precision))["total_bytes"]
    assert info["file_bytes"] == path.stat().st_size
    assert info["file_bytes"] <= 1.05 * info["computed_bytes"]
    plain_spec = json.dumps(spec, separators=(",", ":"))
    assert info["header_bytes"] < len(plain_spec)  # the spec is stored compressed


def test_header_round_trip_and_missing_header(tmp_path):
    spec = {"arch": "resnet20", "num_classes": 10, "layers": {"conv1": {"in_channels": 3, "out_channels": 16}}}
    index = [["csr", 12], ["dense", 7]]
    header = pack_header(spec, index)
    assert header.isascii() and '"' not in header
    assert unpack_header(header) == (spec, index)
    path = tmp_path / "no_header.safetensors"
    save_file({"data": torch.zeros(4, dtype=torch.uint8)}, str(path), metadata={"format": FORMAT, "precision": "int8"})
    with pytest.raises(ValueError, match="no 'header'"):
        load_quantized(path)


def test_artifact_names():
    assert [f"{artifact_dir_name(p)}/{QUANT_FILE_NAME}" for p in ("int8", "int4")] == [
        "model_int8/model.safetensors", "model_int4/model.safetensors"]
    with pytest.raises(ValueError, match="allowed"):
        artifact_dir_name("fp8")


def test_load_rejects_other_safetensors_files(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"data": torch.zeros(4, dtype=torch.uint8)}, str(path), metadata={"spec": json.dumps({})})
    with pytest.raises(ValueError, match="not a prune-tracker-quant"):
        load_quantized(path)
