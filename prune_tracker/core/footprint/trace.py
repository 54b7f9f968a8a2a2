"""One instrumented forward pass: live feature-map memory, per-op records, FLOPs.

A TorchDispatchMode sees every aten op. Each floating-point op output whose storage is new (not a view of
an existing tensor, not a parameter/buffer) is a feature-map allocation; the storage stays alive while any
Python tensor on it is alive (weakref callbacks), so liveness follows eager PyTorch exactly, including a
block input held across a residual connection. Peak = largest sum of live storages right after an op.
The input image counts and stays alive for the whole pass (the model's forward holds it). Integer side
outputs (max-pool indices) and scratch buffers inside kernels do not count. fp16 bytes are the same live
elements at 2 bytes each.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from . import micronet


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@dataclass
class _Storage:
    fp32: int
    fp16: int
    refs: list = field(default_factory=list)


class _ActivationTracker(TorchDispatchMode):
    def __init__(self, excluded: set[int], batch: int, module_stack: list[str]):
        super().__init__()
        self.excluded, self.batch, self.module_stack = excluded, batch, module_stack
        self.storages: dict[int, _Storage] = {}
        self.producers: dict[int, int] = {}
        self.records: list[dict[str, Any]] = []
        self.live32 = self.live16 = self.peak32 = self.peak16 = 0
        self.peak_record: int | None = None

    def _release(self, key: int, entry: _Storage) -> None:
        if len(entry.refs) > 1:
            entry.refs.pop()
            return
        self.live32 -= entry.fp32
        self.live16 -= entry.fp16
        if self.storages.get(key) is entry:
            del self.storages[key]

    def track(self, t: torch.Tensor) -> int:
        """Follow `t`'s storage; returns the fp32 bytes newly allocated (0 for views and parameters)."""
        if not t.is_floating_point() or t.untyped_storage().nbytes() == 0:
            return 0
        key = _storage_key(t)
        if key in self.excluded:
            return 0
        entry = self.storages.get(key)
        new = entry is None
        if new:
            elements = t.untyped_storage().nbytes() // t.element_size()
            entry = self.storages[key] = _Storage(4 * elements, 2 * elements)
            self.live32 += entry.fp32
            self.live16 += entry.fp16
        entry.refs.append(weakref.ref(t, lambda _, k=key, e=entry: self._release(k, e)))
        return entry.fp32 if new else 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(first, torch.Tensor):
            self._record(func.overloadpacket.__name__, args, first, out)
        return out

    def _record(self, name: str, args: tuple, first: torch.Tensor, out: Any) -> None:
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        new = sum(self.track(t) for t in outputs if isinstance(t, torch.Tensor))
        rec: dict[str, Any] = {
            "index": len(self.records),
            "module": self.module_stack[-1],
            "op": name,
            "shape": list(first.shape),
            "new_fp32_bytes": new,
        }
        if args and isinstance(args[0], torch.Tensor):
            rec["producer"] = self.producers.get(_storage_key(args[0]))
        if first.is_floating_point():
            rec["micronet"] = micronet.op_counts(name, args, first, self.batch)
        # The op produced this storage unless it only viewed an existing one. `new` alone is not enough: an output
        # allocated where a dead tensor lived can find that tensor's entry still tracked (its Python object kept
        # alive from C++), and a conv would then not be the producer of its BatchNorm's input.
        if new or name.endswith("_") or not first._is_view():
            self.producers[_storage_key(first)] = rec["index"]
        rec["live_fp32_bytes"] = self.live32
        self.records.append(rec)
        if self.live32 > self.peak32:
            self.peak32, self.peak16, self.peak_record = self.live32, self.live16, rec["index"]


@dataclass
class Trace:
    records: list[dict[str, Any]]
    input_fp32_bytes: int
    peak_fp32_bytes: int
    peak_fp16_bytes: int
    peak_record: int | None
    flops_total: float  # FlopCounterMode total for the whole batch (2 per multiply-add)


def _module_stack_hooks(model: nn.Module, stack: list[str]) -> list:
    def enter(name: str):
        def hook(*_: Any) -> None:
            stack.append(name)

        return hook

    def leave(*_: Any) -> None:
        stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    return handles


def run_trace(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> Trace:
    """Run `model` (CPU, eval) once on a random batch under the tracker and FlopCounterMode."""
    excluded = {_storage_key(t) for t in chain(model.parameters(), model.buffers())}
    stack = ["<input>"]
    tracker = _ActivationTracker(excluded, batch_size, stack)
    x = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
    input_bytes = tracker.track(x)
    tracker.peak32, tracker.peak16 = tracker.live32, tracker.live16
    handles = _module_stack_hooks(model, stack)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as flops, tracker:
            model(x)
    finally:
        for h in handles:
            h.remove()
    micronet.fold_batch_norm(tracker.records)
    return Trace(
        tracker.records,
        input_bytes,
        tracker.peak32,
        tracker.peak16,
        tracker.peak_record,
        float(flops.get_total_flops()),
    )
