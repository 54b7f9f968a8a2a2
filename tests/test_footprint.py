"""Footprint: exact byte counts on hand-built tensors and models, files vs formulas, activation peaks,
FLOPs and the MicroNet score of a hand case."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from prune_tracker.core.footprint import (
    FORMATS,
    Footprint,
    StorageFormat,
    footprint_figure,
    footprint_metrics,
    format_table,
    human_bytes,
    measure_footprint,
    micronet_score,
    parse_bytes,
)
from prune_tracker.core.footprint.formats import FP16, FP32, encode
from prune_tracker.core.footprint.micronet import REFERENCE_OPS, REFERENCE_PARAMS
from prune_tracker.core.footprint.storage import decode, tensor_row


def conv_chain(widths: tuple[int, ...] = (3, 8, 16, 4), strides: tuple[int, ...] = (1, 2, 1)) -> nn.Module:
    layers = [nn.Conv2d(a, b, 3, s, 1) for a, b, s in zip(widths[:-1], widths[1:], strides, strict=True)]
    return nn.Sequential(*layers).eval()


class Skip(nn.Module):
    """conv0 -> conv1 -> conv2, optionally adding conv0's output back at the end."""

    def __init__(self, skip: bool, width: int = 8):
        super().__init__()
        self.skip = skip
        self.conv0, self.conv1, self.conv2 = (nn.Conv2d(c, width, 3, 1, 1) for c in (3, width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.skip:
            return self.conv2(self.conv1(self.conv0(x)))
        y = self.conv0(x)
        return self.conv2(self.conv1(y)) + y


def small_net(width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


def zero_half(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.view(-1)[::2] = 0
    return model


SHAPE = (3, 8, 8)


# --- per-tensor storage ---------------------------------------------------------------------------------

def test_tensor_without_zeros_stays_dense():
    row = tensor_row("w", torch.ones(4, 3, 3, 3))  # 108 elements, 27 columns
    assert (row["fp32"], row["fp16"]) == (432, 216)
    # CSR fp16 would be 108 * (2 + 1) + 5 * 1 = 329 > 216, bitmask 216 + 14 = 230 > 216: both fall back
    assert row["csr_fp16"] == row["bitmask_fp16"] == row["best"] == 216
    assert row["csr_fp32"] == 432  # 108 * 5 + 5 = 545 > 432
    assert (row["csr_fp16_as"], row["bitmask_fp16_as"], row["chosen"]) == ("dense", "dense", "dense")
    assert (row["index_dtype"], row["rowptr_dtype"]) == ("uint8", "uint8")


def test_all_zero_tensor_is_row_pointers_only():
    row = tensor_row("w", torch.zeros(64, 64, 3, 3))  # 36 864 elements, 576 columns
    assert row["nonzeros"] == 0
    assert row["csr_fp16"] == row["csr_fp32"] == 65  # 65 uint8 row pointers, nothing else
    assert row["bitmask_fp16"] == 36864 // 8
    assert (row["chosen"], row["best"], row["index_dtype"]) == ("csr", 65, "uint16")


# columns, index type, CSR fp16 / fp32 bytes of a 2-row tensor with 3 non-zeros: 3 values + 3 column indices
# + 3 uint8 row pointers, e.g. 65 537 columns: 3 x (2 + 4) + 3 = 21 and 3 x (4 + 4) + 3 = 27
INDEX_CASES = [
    (256, "uint8", 12, 18),  # largest index 255
    (257, "uint16", 15, 21),
    (40_000, "uint16", 15, 21),
    (65_536, "uint16", 15, 21),  # largest index 65 535
    (65_537, "uint32", 21, 27),
    (70_000, "uint32", 21, 27),
]


@pytest.mark.parametrize(("cols", "index_dtype", "csr_fp16", "csr_fp32"), INDEX_CASES)
def test_column_index_type_follows_column_count(cols, index_dtype, csr_fp16, csr_fp32):
    t = torch.zeros(2, cols)
    t[0, 0], t[1, cols - 1], t[1, cols // 2] = 1.0, 2.0, 3.0
    row = tensor_row("w", t)
    assert (row["index_dtype"], row["rowptr_dtype"]) == (index_dtype, "uint8")
    assert (row["csr_fp16"], row["csr_fp32"]) == (csr_fp16, csr_fp32)
    arrays = encode("w", t, "csr", FP16)
    assert arrays["w.col_indices"].dtype == np.dtype(index_dtype)
    assert sum(a.nbytes for a in arrays.values()) == csr_fp16
    np.testing.assert_array_equal(decode(arrays, "w", tuple(t.shape)), t.numpy().astype(np.float16))


# non-zeros of a 512 x 256 tensor, row pointer type, CSR fp16 / fp32 bytes: nnz values + nnz uint8 column
# indices + 513 row pointers, e.g. 65 536: 65 536 x 2 + 65 536 + 513 x 4 = 198 660 (fp32: x 4 -> 329 732)
ROW_POINTER_CASES = [
    (255, "uint8", 1_278, 1_788),
    (256, "uint16", 1_794, 2_306),
    (65_535, "uint16", 197_631, 328_701),
    (65_536, "uint32", 198_660, 329_732),
]


@pytest.mark.parametrize(("nnz", "rowptr_dtype", "csr_fp16", "csr_fp32"), ROW_POINTER_CASES)
def test_row_pointer_type_at_its_boundaries(nnz, rowptr_dtype, csr_fp16, csr_fp32):
    t = torch.zeros(512, 256)
    t.view(-1)[:nnz] = 1.0
    row = tensor_row("w", t)
    assert (row["rowptr_dtype"], row["index_dtype"]) == (rowptr_dtype, "uint8")
    assert (row["csr_fp16"], row["csr_fp32"]) == (csr_fp16, csr_fp32)
    assert row["csr_fp16_as"] == row["csr_fp32_as"] == "csr"  # dense would be 262 144 / 524 288
    arrays = encode("w", t, "csr", FP16)
    assert arrays["w.row_ptr"].dtype == np.dtype(rowptr_dtype)
    assert sum(a.nbytes for a in arrays.values()) == csr_fp16
    np.testing.assert_array_equal(decode(arrays, "w", (512, 256)), t.numpy().astype(np.float16))


def test_row_pointer_type_follows_nonzero_count():
    t = torch.ones(2, 300)  # 600 non-zeros > 255 -> uint16 pointers, 300 columns -> uint16 indices
    row = tensor_row("w", t)
    assert row["rowptr_dtype"] == "uint16"
    assert encode("w", t, "csr", FP16)["w.row_ptr"].dtype == np.uint16


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="unknown storage layout 'coo'; known: dense, csr, bitmask"):
        encode("w", torch.ones(2, 2), "coo", FP16)


def test_one_dimensional_and_integer_tensors_are_dense():
    bias = tensor_row("b", torch.zeros(100))
    assert bias["csr_fp16"] == bias["bitmask_fp16"] == bias["best"] == 200
    ints = tensor_row("i", torch.zeros(10, dtype=torch.int64))
    assert ints["fp32"] == ints["fp16"] == ints["best"] == 80


def test_bitmask_wins_at_moderate_sparsity():
    t = torch.ones(64, 576)
    t.view(-1)[::2] = 0  # 50% sparse: CSR 18432*4 + 65*2 = 73 858, bitmask 18432*2 + 4608 = 41 472
    row = tensor_row("w", t)
    assert (row["csr_fp16"], row["bitmask_fp16"], row["fp16"]) == (73_728, 41_472, 73_728)
    assert row["csr_fp16_as"] == "dense" and row["chosen"] == "bitmask"
    arrays = encode("w", t, "bitmask", FP16)
    np.testing.assert_array_equal(decode(arrays, "w", (64, 576)), t.numpy().astype(np.float16))


# --- the format registry -------------------------------------------------------------------------------

CONTRACT_METRICS = {
    "footprint_fp32_bytes", "footprint_fp16_bytes", "footprint_csr_fp32_bytes", "footprint_csr_fp16_bytes",
    "footprint_bitmask_fp16_bytes", "footprint_best_bytes", "file_fp32_bytes", "file_fp16_bytes",
    "file_csr_fp32_bytes", "file_csr_fp16_bytes", "file_bitmask_fp16_bytes", "file_best_fp16_bytes",
    "file_fp16_gzip_bytes", "file_torch_csr_bytes", "activation_peak_fp32_bytes", "activation_peak_fp16_bytes",
    "total_fp16_best_bytes", "params_total", "params_nonzero", "flops_dense", "flops_effective",
    "micronet_score", "micronet_params", "micronet_ops",
}  # fmt: skip
CONTRACT_ROW_FIELDS = {
    "name", "shape", "numel", "nonzeros", "fp32", "fp16", "csr_fp32", "csr_fp16", "bitmask_fp16", "best",
    "csr_fp32_as", "csr_fp16_as", "bitmask_fp16_as", "chosen", "index_dtype", "rowptr_dtype",
}  # fmt: skip


def test_metric_names_and_row_fields_keep_their_contract():
    fp = measure_footprint(zero_half(small_net()), input_shape=SHAPE)
    assert set(fp.metrics) >= CONTRACT_METRICS
    assert all(set(r) >= CONTRACT_ROW_FIELDS for r in fp.breakdown["tensors"])
    assert set(footprint_metrics()) >= {
        "footprint_fp32_bytes", "footprint_fp16_bytes", "footprint_csr_fp32_bytes", "footprint_csr_fp16_bytes",
        "footprint_bitmask_fp16_bytes", "footprint_best_bytes", "total_fp16_best_bytes", "micronet_score",
    }  # fmt: skip


def test_a_new_format_is_one_registry_entry(monkeypatch, tmp_path):
    monkeypatch.setitem(FORMATS, "bitmask_fp32", StorageFormat("bitmask_fp32", "bitmask fp32", FP32, ("bitmask",)))
    t = torch.ones(64, 576)
    t.view(-1)[::2] = 0
    row = tensor_row("w", t)  # 18 432 fp32 values + 36 864 / 8 mask bytes
    assert (row["bitmask_fp32"], row["bitmask_fp32_as"]) == (78_336, "bitmask")
    model = zero_half(small_net())
    fp = measure_footprint(model, input_shape=SHAPE, write_files_to=tmp_path)
    info = fp.breakdown["files"]["bitmask_fp32"]
    assert fp.metrics["footprint_bitmask_fp32_bytes"] == info["payload_bytes"]
    assert fp.metrics["file_bitmask_fp32_bytes"] == (tmp_path / "params_bitmask_fp32.npz").stat().st_size
    with np.load(tmp_path / info["path"]) as npz:
        arrays = dict(npz)
    weight = model[0].weight.detach()
    np.testing.assert_array_equal(decode(arrays, "0.weight", tuple(weight.shape)), weight.numpy())
    assert "footprint_bitmask_fp32_bytes" in footprint_metrics()
    assert "bitmask fp32" in format_table(fp).splitlines()[1]
    assert len([b for c in footprint_figure(fp).axes[0].containers for b in c]) == 2 * 7


# --- model-level storage and files ---------------------------------------------------------------------

def test_fp16_is_half_of_fp32_and_bn_buffers_count():
    fp = measure_footprint(small_net(), input_shape=SHAPE)
    m = fp.metrics
    assert m["footprint_fp16_bytes"] * 2 == m["footprint_fp32_bytes"]
    # 3*16*9 + 16*16*9 conv weights, 2 BNs x 4 x 16, linear 16*10 + 10; num_batches_tracked excluded
    assert m["footprint_fp32_bytes"] == 4 * (432 + 2304 + 2 * 4 * 16 + 170)
    assert m["params_total"] == 432 + 2304 + 2 * 2 * 16 + 170
    assert not any("num_batches_tracked" in r["name"] for r in fp.breakdown["tensors"])


def test_csr_shrinks_with_sparsity():
    dense = measure_footprint(small_net(), input_shape=SHAPE).metrics
    sparse_model = small_net()
    with torch.no_grad():
        for m in sparse_model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight[m.weight.abs() < m.weight.abs().quantile(0.9)] = 0
    sparse = measure_footprint(sparse_model, input_shape=SHAPE).metrics
    assert dense["footprint_csr_fp16_bytes"] == dense["footprint_fp16_bytes"]
    assert sparse["footprint_csr_fp16_bytes"] < 0.5 * sparse["footprint_fp16_bytes"]
    assert sparse["footprint_best_bytes"] <= sparse["footprint_csr_fp16_bytes"]
    assert sparse["footprint_fp16_bytes"] == dense["footprint_fp16_bytes"]


def test_written_files_match_computed_sizes(tmp_path):
    fp = measure_footprint(zero_half(small_net()), input_shape=SHAPE, write_files_to=tmp_path)
    files, m = fp.breakdown["files"], fp.metrics
    computed = {"fp32": "footprint_fp32_bytes", "fp16": "footprint_fp16_bytes",  # the contract, by hand
                "csr_fp32": "footprint_csr_fp32_bytes", "csr_fp16": "footprint_csr_fp16_bytes",
                "bitmask_fp16": "footprint_bitmask_fp16_bytes", "best_fp16": "footprint_best_bytes"}
    for key, metric in computed.items():
        info = files[key]
        assert info["payload_bytes"] == m[metric], key  # exactly the arrays the formula counts
        assert m[f"file_{key}_bytes"] == (tmp_path / info["path"]).stat().st_size
        with np.load(tmp_path / info["path"]) as npz:
            names = npz.files
        bound = 22 + sum(256 + 2 * len(name) for name in names)  # npy header + zip entry per array
        assert 0 < m[f"file_{key}_bytes"] - m[metric] <= bound, key
    assert m["file_fp16_gzip_bytes"] < m["file_fp16_bytes"]
    assert m["file_torch_csr_bytes"] > m["file_csr_fp16_bytes"]  # int64 indices


def test_best_file_decodes_to_the_weights(tmp_path):
    model = zero_half(small_net())
    fp = measure_footprint(model, input_shape=SHAPE, write_files_to=tmp_path)
    assert {r["chosen"] for r in fp.breakdown["tensors"]} >= {"dense", "bitmask"}
    with np.load(tmp_path / fp.breakdown["files"]["best_fp16"]["path"]) as npz:
        arrays = dict(npz)
    for name, t in model.state_dict().items():
        if "num_batches" not in name:
            np.testing.assert_array_equal(decode(arrays, name, tuple(t.shape)), t.numpy().astype(np.float16))


# --- activations -----------------------------------------------------------------------------------------

def test_activation_peak_of_a_conv_chain_by_hand():
    # fp32 bytes: input 3*8*8*4 = 768, conv1 8*8*8*4 = 2048, conv2 16*4*4*4 = 1024, conv3 4*4*4*4 = 256.
    # Peak while conv2 runs: input (held all pass) + its input + its output = 768 + 2048 + 1024.
    fp = measure_footprint(conv_chain(), input_shape=SHAPE)
    assert fp.metrics["activation_peak_fp32_bytes"] == 3840
    assert fp.metrics["activation_peak_fp16_bytes"] == 1920
    rows = fp.breakdown["activations"]["rows"]
    assert [r["fp32_bytes"] for r in rows] == [2048, 1024, 256]
    assert [r["live_fp32_bytes"] for r in rows] == [768 + 2048, 3840, 768 + 1024 + 256]
    assert fp.breakdown["activations"]["peak_at"] == {"module": "1", "op": "convolution"}
    batch2 = measure_footprint(conv_chain(), input_shape=SHAPE, batch_size=2).metrics
    assert batch2["activation_peak_fp32_bytes"] == 2 * 3840
    assert batch2["flops_dense"] == fp.metrics["flops_dense"]  # per image


def test_residual_keeps_a_tensor_alive():
    # every map 8*8*8*4 = 2048 B, input 768 B
    chain = measure_footprint(Skip(skip=False), input_shape=SHAPE).metrics["activation_peak_fp32_bytes"]
    skip = measure_footprint(Skip(skip=True), input_shape=SHAPE).metrics["activation_peak_fp32_bytes"]
    assert chain == 768 + 2 * 2048  # a conv's input and output
    assert skip == 768 + 3 * 2048  # ... plus conv0's output, held for the add


def test_structured_pruning_shrinks_activations_unstructured_does_not():
    wide = measure_footprint(small_net(16), input_shape=SHAPE).metrics
    narrow = measure_footprint(small_net(8), input_shape=SHAPE).metrics
    sparse = measure_footprint(zero_half(small_net(16)), input_shape=SHAPE).metrics
    assert narrow["activation_peak_fp32_bytes"] < wide["activation_peak_fp32_bytes"]
    assert sparse["activation_peak_fp32_bytes"] == wide["activation_peak_fp32_bytes"]
    assert sparse["footprint_best_bytes"] < wide["footprint_best_bytes"]
    assert wide["total_fp16_best_bytes"] == wide["footprint_best_bytes"] + wide["activation_peak_fp16_bytes"]


# --- masks, copies, parents ------------------------------------------------------------------------------

def test_masked_modules_measure_like_removed_ones():
    masked = small_net()
    for m in masked.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(m, "weight", amount=0.6)
    before = {k: v.clone() for k, v in masked.state_dict().items()}
    removed = small_net()
    removed.load_state_dict({k.replace("_orig", ""): v for k, v in masked.state_dict().items()
                             if not k.endswith("_mask")} | {}, strict=False)
    with torch.no_grad():
        for (_, a), (_, b) in zip(masked.named_modules(), removed.named_modules(), strict=True):
            if isinstance(a, (nn.Conv2d, nn.Linear)):
                b.weight.copy_(a.weight)  # effective weight = weight_orig * weight_mask
    fp_masked = measure_footprint(masked, input_shape=SHAPE).metrics
    assert fp_masked == measure_footprint(removed, input_shape=SHAPE).metrics
    assert fp_masked["params_nonzero"] < fp_masked["params_total"]
    assert hasattr(masked[0], "weight_orig") and hasattr(masked[0], "weight_mask")  # caller untouched
    assert all(torch.equal(before[k], v) for k, v in masked.state_dict().items())


def test_caller_model_is_not_changed():
    model = small_net().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    measure_footprint(model, input_shape=SHAPE)
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not model[0]._forward_hooks and not model[0]._forward_pre_hooks


def test_parent_gives_reductions():
    parent = measure_footprint(small_net(16), input_shape=SHAPE)
    alone = measure_footprint(small_net(8), input_shape=SHAPE).metrics
    assert not any(k.endswith("_reduction") for k in alone)
    child = measure_footprint(small_net(8), input_shape=SHAPE, parent=parent).metrics
    assert child == measure_footprint(small_net(8), input_shape=SHAPE, parent=parent.metrics).metrics
    expected = 1 - child["flops_effective"] / parent.metrics["flops_effective"]
    assert child["flops_reduction"] == pytest.approx(expected)
    assert 0 < child["params_reduction"] < 1 and 0 < child["footprint_best_reduction"] < 1


# --- compute ---------------------------------------------------------------------------------------------

def test_flops_dense_by_hand_and_effective_with_zeros():
    # MACs: 8x8 outputs x 8 ch x 27 + 4x4 x 16 x 72 + 4x4 x 4 x 144
    fp = measure_footprint(conv_chain(), input_shape=SHAPE)
    assert fp.metrics["flops_dense"] == 64 * 8 * 27 + 16 * 16 * 72 + 16 * 4 * 144
    assert fp.metrics["flops_effective"] == fp.metrics["flops_dense"]
    sparse = measure_footprint(zero_half(conv_chain()), input_shape=SHAPE).metrics
    assert sparse["flops_dense"] == fp.metrics["flops_dense"]
    assert sparse["flops_effective"] == pytest.approx(fp.metrics["flops_dense"] / 2)


def test_resnet20_flops_and_bn_folding():
    from prune_tracker.core.models import build_model

    fp = measure_footprint(build_model("resnet20"))
    assert fp.metrics["flops_dense"] == pytest.approx(40.55e6, rel=1e-3)  # MACs, zero-pad shortcuts
    micro = fp.breakdown["micronet"]
    assert len(micro["folded_batch_norms"]) == 19 and micro["uncounted_ops"] == []


class MicroCase(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight[0, 0] = 0  # output channel 0 keeps 18 of 27 weights: 99 of 108 non-zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.conv(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))


def test_micronet_score_of_a_hand_case():
    # input 3x4x4, conv 3->4 (pad 1): 16 positions x 4 channels = 64 outputs
    mults = 99 * 16 + 64 + 4 + 8  # conv, ReLU, avg-pool divisions, fc
    adds = (17 + 26 * 3) * 16 + 64 + 15 * 4 + (3 * 2 + 2)  # conv dot products, folded-BN bias, pool sums, fc
    assert (mults, adds) == (1660, 1652)
    for bits in (16, 32):
        param_bits = min(108 * bits, 99 * bits + 108) + 4 * bits + 10 * bits  # sparse conv, BN bias, fc
        expected = param_bits / 32 / REFERENCE_PARAMS + (mults * bits / 32 + adds) / REFERENCE_OPS
        score = micronet_score(MicroCase(), precision_bits=bits, input_shape=(3, 4, 4))
        assert score == pytest.approx(expected)
    fp = measure_footprint(MicroCase(), input_shape=(3, 4, 4))
    assert (fp.breakdown["micronet"]["mults"], fp.breakdown["micronet"]["adds"]) == (1660, 1652)
    assert fp.metrics["micronet_params"] == (99 * 16 + 108 + 4 * 16 + 10 * 16) / 32
    assert fp.metrics["micronet_ops"] == 1660 / 2 + 1652


# --- units, table, figure ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("200KB", 200_000), ("200 kb", 200_000), ("1.5MiB", 1_572_864), ("1gib", 1024**3), ("2GB", 2 * 10**9),
    (" 512 ", 512), ("512B", 512), ("0", 0), ("0.5KB", 500), (".5 kB", 500), ("1.0005KB", 1001), (7, 7),
    ("3MB", 3_000_000), ("1KiB", 1024),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "KB", "abc", "10XB", "-5KB", "1e3", "1.2.3KB", "5 K B", "kb5", -1])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError) as err:
        parse_bytes(text)
    assert str(text) in str(err.value)
    if isinstance(text, str):
        assert "KiB" in str(err.value)


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (999, "999 B"), (1000, "1 KB"), (1536, "1.54 KB"),
                                         (999_950, "1 MB"), (2_500_000, "2.5 MB"), (-2048, "-2.05 KB"),
                                         (3.2e9, "3.2 GB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def test_human_bytes_round_trips():
    for n in (1, 999, 12_345, 987_654, 1_714_164, 3_428_328_000):
        assert parse_bytes(human_bytes(n)) == pytest.approx(n, rel=5e-3)


def test_table_figure_and_json():
    fp = measure_footprint(zero_half(small_net()), input_shape=SHAPE)
    assert isinstance(fp, Footprint)
    json.dumps(fp.breakdown)
    table = format_table(fp)
    assert "0.weight" in table and "(bitmask)" in table and "Activation peak" in table and "MicroNet" in table
    fig = footprint_figure(fp)
    bars = [b for c in fig.axes[0].containers for b in c]  # 6 parameter bars, then 6 activation bars
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        "fp32", "fp16", "CSR fp32", "CSR fp16", "bitmask fp16", "best fp16"]  # fmt: skip
    m = fp.metrics
    assert [b.get_height() for b in bars[:6]] == [m[k] for k in (
        "footprint_fp32_bytes", "footprint_fp16_bytes", "footprint_csr_fp32_bytes", "footprint_csr_fp16_bytes",
        "footprint_bitmask_fp16_bytes", "footprint_best_bytes")]  # fmt: skip
    act32, act16 = m["activation_peak_fp32_bytes"], m["activation_peak_fp16_bytes"]
    assert [b.get_height() for b in bars[6:]] == [act32, act16, act32, act16, act16, act16]  # by value type
    fig.canvas.draw()
