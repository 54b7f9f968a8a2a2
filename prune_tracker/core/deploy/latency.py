"""Latency on one thread, measured the same way for every runtime: torch.utils.benchmark's blocked_autorange (one
warm-up call, then blocks of calls for at least MIN_RUN_TIME seconds), median and interquartile range of the time of
one call (one batch), torch's intra-op threads pinned to 1 while timing, ONNX Runtime sessions made with one intra-
and one inter-op thread (`runtime.session`). The input is the same seeded random batch for every runtime."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.utils import benchmark

from .export import INPUT_NAME

LATENCY_BATCHES = (1, 128)
MIN_RUN_TIME = 1.0  # seconds of timed calls per figure, after the warm-up

Call = Callable[[], object]


@dataclass(frozen=True)
class Latency:
    median_ms: float
    iqr_ms: float


def measure(call: Call, min_run_time: float | None = None) -> Latency:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the warm-up too: kernels chosen for one thread
    try:
        call()  # warm-up: first-call allocations, kernel selection
        timer = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=1)
        result = timer.blocked_autorange(min_run_time=MIN_RUN_TIME if min_run_time is None else min_run_time)
    finally:
        torch.set_num_threads(threads)
    return Latency(1e3 * result.median, 1e3 * result.iqr)


def example_batch(batch_size: int, input_shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))


def torch_call(model: nn.Module) -> Callable[[torch.Tensor], Call]:
    """batch -> one eager forward pass of `model` (CPU, eval) on it, without autograd."""
    def make(batch: torch.Tensor) -> Call:
        def call() -> object:
            with torch.inference_mode():
                return model(batch)

        return call

    return make


def ort_call(runner: ort.InferenceSession) -> Callable[[torch.Tensor], Call]:
    """batch -> one ONNX Runtime run of `runner` on it (converted to numpy once, outside the timed call)."""
    def make(batch: torch.Tensor) -> Call:
        feed = {INPUT_NAME: np.ascontiguousarray(batch.numpy(), dtype=np.float32)}
        return lambda: runner.run(None, feed)

    return make


def latency_name(runtime: str, batch_size: int) -> str:
    """`latency_ms_<runtime>` at batch 1, `latency_ms_<runtime>_batch<N>` at batch N."""
    return f"latency_ms_{runtime}" + ("" if batch_size == 1 else f"_batch{batch_size}")


def latency_metrics(runtime: str, make_call: Callable[[torch.Tensor], Call], input_shape: tuple[int, ...],
                    min_run_time: float | None = None) -> dict[str, float]:
    """For each of LATENCY_BATCHES: `latency_name(runtime, batch)` (median ms per call, i.e. per batch) and its
    interquartile range `<that name>_iqr`."""
    metrics = {}
    for batch_size in LATENCY_BATCHES:
        measured = measure(make_call(example_batch(batch_size, input_shape)), min_run_time)
        name = latency_name(runtime, batch_size)
        metrics[name], metrics[f"{name}_iqr"] = measured.median_ms, measured.iqr_ms
    return metrics
