"""MicroNet Challenge (NeurIPS 2019, CIFAR-100 track) score from a traced forward pass.

score = params / 36.5e6 + ops / 10.49e9 (WideResNet-28-10 reference); see the package docstring for
the counting rules. `op_counts` classifies one aten op while the model runs; `summarize` folds
BatchNorm into its producer and totals parameters and operations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

REFERENCE_PARAMS = 36.5e6
REFERENCE_OPS = 10.49e9
ADD_BITS = 32  # accumulators stay 32-bit: an addition always counts 1

_CONV = {"convolution"}
_LINEAR = {"addmm", "mm"}
_BATCH_NORM = {
    "native_batch_norm",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit",
    "batch_norm",
}
_RELU = {
    "relu",
    "relu_",
    "threshold",
    "threshold_",
    "hardtanh",
    "hardtanh_",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_min_",
}
_ACTIVATIONS = {"silu": (3, 1), "silu_": (3, 1), "sigmoid": (2, 1), "sigmoid_": (2, 1)}  # counting.py
_ADD = {"add", "add_", "sub", "sub_"}
_MUL = {"mul", "mul_", "div", "div_"}
_AVG_POOL = {"mean", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "avg_pool2d"}
_MAX_POOL = {"max_pool2d", "max_pool2d_with_indices"}
_FREE = {
    "view",
    "_unsafe_view",
    "reshape",
    "_reshape_alias",
    "t",
    "transpose",
    "permute",
    "slice",
    "select",
    "constant_pad_nd",
    "cat",
    "clone",
    "contiguous",
    "empty",
    "empty_like",
    "expand",
    "detach",
    "alias",
    "unsqueeze",
    "squeeze",
    "_to_copy",
    "copy_",
    "flatten",
    "split",
    "split_with_sizes",
    "chunk",
    "as_strided",
    "zeros",
    "zeros_like",
    "unbind",
    "lift_fresh",
    "dropout",
    "native_dropout",
    "identity",
    "pad",
}


def _row_nonzeros(weight: torch.Tensor, rows_dim: int) -> torch.Tensor:
    """Non-zeros per output row (output channel / output feature)."""
    w = weight.detach()
    return torch.count_nonzero(w.movedim(rows_dim, 0).reshape(w.shape[rows_dim], -1), dim=1)


def _dot_products(weight: torch.Tensor, rows_dim: int, positions: float) -> dict[str, float]:
    nnz = _row_nonzeros(weight, rows_dim)
    return {
        "mults": float(nnz.sum()) * positions,
        "adds": float((nnz - 1).clamp(min=0).sum()) * positions,
        "macs_dense": float(weight.numel()) * positions,
        "density": float(nnz.sum()) / max(weight.numel(), 1),
    }


def op_counts(name: str, args: tuple, out: torch.Tensor, batch: int) -> dict[str, Any]:
    """Per-image multiplies/adds of one aten op (BatchNorm folding and biases are resolved later)."""
    n = out.numel() / batch
    if name in _CONV:
        channels = out.shape[1]
        counts = _dot_products(args[1], 0, n / channels)
        return {"kind": "conv", "has_bias": args[2] is not None, "outputs": n, **counts}
    if name in _LINEAR:
        weight_t = args[2] if name == "addmm" else args[1]
        counts = _dot_products(weight_t, 1, n / out.shape[-1])
        return {"kind": "linear", "has_bias": name == "addmm", "outputs": n, **counts}
    if name in _BATCH_NORM:
        return {"kind": "batchnorm", "mults": n, "adds": n, "outputs": n}
    if name in _RELU:
        return {"kind": "relu", "mults": n, "adds": 0.0}
    if name in _ACTIVATIONS:
        mults, adds = _ACTIVATIONS[name]
        return {"kind": "activation", "mults": mults * n, "adds": adds * n}
    if name in _ADD:
        return {"kind": "add", "mults": 0.0, "adds": n}
    if name in _MUL:
        return {"kind": "scale", "mults": n, "adds": 0.0}
    if name in _AVG_POOL:
        window = math.prod(args[1]) if name == "avg_pool2d" else args[0].numel() / out.numel()
        return {"kind": "avgpool", "mults": n, "adds": (window - 1) * n}
    if name in _MAX_POOL:
        return {"kind": "maxpool", "mults": 0.0, "adds": (math.prod(args[1]) - 1) * n}
    if name in _FREE:
        return {"kind": "free", "mults": 0.0, "adds": 0.0}
    return {"kind": "uncounted", "mults": 0.0, "adds": 0.0}


def fold_batch_norm(records: list[dict[str, Any]]) -> None:
    """A BatchNorm whose input came straight from a conv/linear op folds into it: no ops, and the
    producer gains a bias (one add per output) if it had none."""
    for rec in records:
        counts = rec.get("micronet", {})
        producer = rec.get("producer")
        if counts.get("kind") != "batchnorm" or producer is None:
            continue
        target = records[producer].get("micronet", {})
        if target.get("kind") in ("conv", "linear"):
            counts.update(mults=0.0, adds=0.0, folded_into=records[producer]["module"])
            target["folded_bn"] = rec["module"]


def _tensor_bits(t: torch.Tensor, bits: int) -> float:
    numel = t.numel()
    dense = numel * bits
    if t.dim() < 2 or not t.is_floating_point():
        return float(dense)
    nnz = int(torch.count_nonzero(t))
    return float(min(dense, nnz * bits + numel)) if nnz < numel else float(dense)


def _param_bits(model: nn.Module, folded_bn: set[str], gains_bias: set[str], bits: int) -> float:
    total = 0.0
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            total += 0.0 if name in folded_bn else 2 * module.num_features * bits  # scale + shift
            continue
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        total += sum(_tensor_bits(t, bits) for key, t in own if key != "num_batches_tracked")
        if name in gains_bias and getattr(module, "bias", None) is None:
            total += (module.weight.shape[0]) * bits
    return total


def _has_bias(counts: dict[str, Any]) -> bool:
    return counts["kind"] in ("conv", "linear") and bool(counts["has_bias"] or counts.get("folded_bn"))


def summarize(records: list[dict[str, Any]], model: nn.Module, precision_bits: int = 16,
              mult_bits: int | None = None) -> dict[str, Any]:
    """Totals and score; `records` must have been through `fold_batch_norm`. Parameters count at
    `precision_bits`; a multiply counts at the wider of its operands, `mult_bits` (default `precision_bits`):
    int8 weights times fp16 activations is a 16-bit multiply, int8 times int8 an 8-bit one."""
    mult_bits = precision_bits if mult_bits is None else mult_bits
    for name, bits in (("precision_bits", precision_bits), ("mult_bits", mult_bits)):
        if not 1 <= bits <= 32:
            raise ValueError(f"{name} must be in 1..32, got {bits}")
    ops = [r["micronet"] for r in records if "micronet" in r]
    mults = sum(c["mults"] for c in ops)
    adds = sum(c["adds"] for c in ops) + sum(c["outputs"] for c in ops if _has_bias(c))
    folded_bn = {r["module"] for r in records if r.get("micronet", {}).get("folded_into")}
    gains_bias = {r["module"] for r in records if r.get("micronet", {}).get("folded_bn")}
    params = _param_bits(model, folded_bn, gains_bias, precision_bits) / 32
    op_score = mults * mult_bits / 32 + adds * ADD_BITS / 32
    return {
        "precision_bits": precision_bits,
        "mult_bits": mult_bits,
        "params": params,
        "mults": mults,
        "adds": adds,
        "ops": op_score,
        "score": params / REFERENCE_PARAMS + op_score / REFERENCE_OPS,
        "folded_batch_norms": sorted(folded_bn),
        "uncounted_ops": sorted(
            {r["op"] for r in records if r.get("micronet", {}).get("kind") == "uncounted"}
        ),
    }
