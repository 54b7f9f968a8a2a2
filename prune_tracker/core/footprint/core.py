"""`measure_footprint`: parameter storage, activation peak, compute and MicroNet score of one model."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from . import micronet, storage
from .formats import FORMATS, storage_metrics
from .trace import Trace, run_trace

COMPUTE_METRICS = (
    "activation_peak_fp32_bytes",
    "activation_peak_fp16_bytes",
    "total_fp16_best_bytes",
    "micronet_score",
    "flops_dense",
    "flops_effective",
    "params_nonzero",
)


def footprint_metrics() -> tuple[str, ...]:
    """The metrics a model can be compared by (compare / report x axis, the prune job's byte target): one per
    registered storage format, then activations, compute and the MicroNet score."""
    return (*storage_metrics(), *COMPUTE_METRICS)


# metric -> breakdown total it is compared against a parent with (1 - child / parent)
REDUCTIONS = {
    "flops_reduction": "flops_effective",
    "params_reduction": "params_nonzero",
    "footprint_best_reduction": "footprint_best_bytes",
    "total_fp16_best_reduction": "total_fp16_best_bytes",
}


@dataclass
class Footprint:
    metrics: dict[str, float]
    breakdown: dict[str, Any]


def inference_copy(model: nn.Module) -> nn.Module:
    """A CPU float32 eval-mode copy with pruning masks baked in (prune.remove on the copy only)."""
    # masked modules hold `weight` = weight_orig * weight_mask, a non-leaf tensor deepcopy refuses
    memo = {id(t): t.detach().clone() for m in model.modules() for t in vars(m).values()
            if isinstance(t, torch.Tensor) and t.grad_fn is not None}
    net = copy.deepcopy(model, memo)
    for module in net.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return net.to(device="cpu", dtype=torch.float32).eval()


def state_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every tensor inference needs: parameters and buffers, minus num_batches_tracked and duplicates."""
    seen: set[tuple[int, tuple[int, ...]]] = set()
    out = []
    for name, t in model.state_dict(keep_vars=True).items():
        key = (t.untyped_storage().data_ptr(), tuple(t.shape))
        if name.endswith("num_batches_tracked") or (t.numel() and key in seen):
            continue
        seen.add(key)
        out.append((name, t.detach()))
    return out


def _storage_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {f.metric: float(sum(r[f.name] for r in rows)) for f in FORMATS.values()}


def _param_counts(model: nn.Module) -> dict[str, float]:
    params = [p.detach() for p in model.parameters()]
    return {
        "params_total": float(sum(p.numel() for p in params)),
        "params_nonzero": float(sum(int(torch.count_nonzero(p)) for p in params)),
    }


def _flops(trace: Trace, batch_size: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """MACs per image: dense from FlopCounterMode (2 FLOPs per MAC, halved), effective per layer."""
    layers = [
        {
            "module": r["module"],
            "op": r["op"],
            "macs_dense": r["micronet"]["macs_dense"],
            "density": r["micronet"]["density"],
            "macs_effective": r["micronet"]["macs_dense"] * r["micronet"]["density"],
        }
        for r in trace.records
        if r.get("micronet", {}).get("kind") in ("conv", "linear")
    ]
    dense = trace.flops_total / 2 / batch_size
    effective = dense - sum(layer["macs_dense"] - layer["macs_effective"] for layer in layers)
    return {"flops_dense": dense, "flops_effective": effective}, layers


def _activation_rows(trace: Trace) -> list[dict[str, Any]]:
    return [
        {
            "module": r["module"],
            "op": r["op"],
            "shape": r["shape"],
            "fp32_bytes": r["new_fp32_bytes"],
            "fp16_bytes": r["new_fp32_bytes"] // 2,
            "live_fp32_bytes": r["live_fp32_bytes"],
        }
        for r in trace.records
        if r["new_fp32_bytes"]
    ]


def _file_metrics(files: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {f"file_{key}_bytes": float(info["file_bytes"]) for key, info in files.items()}


def _reductions(metrics: dict[str, float], parent: dict | Footprint) -> dict[str, float]:
    base = parent.metrics if isinstance(parent, Footprint) else parent
    return {name: 1.0 - metrics[key] / base[key] for name, key in REDUCTIONS.items() if base.get(key)}


def _write(tensors: list, rows: list, write_files_to: Path | None) -> dict[str, dict[str, Any]]:
    if write_files_to is not None:
        return storage.write_files(tensors, rows, Path(write_files_to))
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        return storage.write_files(tensors, rows, Path(tmp))


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread: a batch-1 CIFAR forward gains nothing from more, and on a
    shared CPU the OpenMP threads of a 2-thread forward can wait on each other for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def measure_footprint(
    model: nn.Module,
    input_shape: tuple[int, ...] = (3, 32, 32),
    batch_size: int = 1,
    parent: dict | Footprint | None = None,
    write_files_to: Path | None = None,
) -> Footprint:
    """Measure `model` on a CPU copy (the caller's model is left untouched); see the package docstring."""
    with single_thread():
        return _measure(model, tuple(input_shape), batch_size, parent, write_files_to)


def _measure(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, parent: dict | Footprint | None,
             write_files_to: Path | None) -> Footprint:
    net = inference_copy(model)
    tensors = state_tensors(net)
    rows = [storage.tensor_row(name, t) for name, t in tensors]
    trace = run_trace(net, input_shape, batch_size)
    flops, layers = _flops(trace, batch_size)
    score = micronet.summarize(trace.records, net, precision_bits=16)
    files = _write(tensors, rows, write_files_to)
    metrics = (
        _storage_metrics(rows)
        | _param_counts(net)
        | _file_metrics(files)
        | flops
        | {
            "activation_peak_fp32_bytes": float(trace.peak_fp32_bytes),
            "activation_peak_fp16_bytes": float(trace.peak_fp16_bytes),
            "micronet_score": score["score"],
            "micronet_params": score["params"],
            "micronet_ops": score["ops"],
        }
    )
    metrics["total_fp16_best_bytes"] = metrics["footprint_best_bytes"] + metrics["activation_peak_fp16_bytes"]
    if parent is not None:
        metrics |= _reductions(metrics, parent)
    peak = trace.records[trace.peak_record] if trace.peak_record is not None else None
    breakdown = {
        "tensors": rows,
        "activations": {
            "batch_size": batch_size,
            "input_shape": list(input_shape),
            "input_fp32_bytes": trace.input_fp32_bytes,
            "peak_fp32_bytes": trace.peak_fp32_bytes,
            "peak_fp16_bytes": trace.peak_fp16_bytes,
            "peak_at": {"module": peak["module"], "op": peak["op"]} if peak else {"module": "<input>"},
            "rows": _activation_rows(trace),
        },
        "flops": {"unit": "multiply-accumulates per image", **flops, "layers": layers},
        "micronet": score,
        "files": files,
        "totals": dict(metrics),
    }
    return Footprint(metrics, breakdown)


def micronet_score(
    model: nn.Module, precision_bits: int = 16, input_shape: tuple[int, ...] = (3, 32, 32),
    mult_bits: int | None = None,
) -> float:
    """MicroNet CIFAR-100 score of `model` with parameters at `precision_bits` and multiplies at `mult_bits`
    (default: `precision_bits`)."""
    with single_thread():
        net = inference_copy(model)
        records = run_trace(net, tuple(input_shape), 1).records
        return micronet.summarize(records, net, precision_bits, mult_bits)["score"]
