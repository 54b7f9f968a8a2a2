"""Small pieces the unstructured methods share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from .base import PruneResult
from .layers import prunable_layers
from .masks import global_sparsity, sparsity_report

LAYER_OPTIONS: dict[str, Any] = {"keep_first": True, "keep_last": True}


def target_layers(model: nn.Module, opts: dict[str, Any]) -> list[tuple[str, nn.Module]]:
    layers = prunable_layers(model, opts["keep_first"], opts["keep_last"])
    if not layers:
        raise ValueError("no prunable Conv2d/Linear layers left with these keep_first/keep_last options")
    return layers


def n_weights(layers: list[tuple[str, nn.Module]]) -> int:
    return sum(m.weight.numel() for _, m in layers)


def global_amount(layers: list[tuple[str, nn.Module]], ratio: float) -> int:
    """How many weights a global cut at `ratio` removes: round(ratio * the weights of `layers`)."""
    return int(round(ratio * n_weights(layers)))


def prune_globally(layers: list[tuple[str, nn.Module]], ratio: float, method: type[prune.BasePruningMethod]) -> None:
    """`prune.global_unstructured` of `global_amount(layers, ratio)` weights over `layers` by `method`."""
    params = [(m, "weight") for _, m in layers]
    prune.global_unstructured(params, pruning_method=method, amount=global_amount(layers, ratio))


def unstructured_result(
    model: nn.Module, opts: dict[str, Any], finetuned_epochs: float = 0.0, **details: Any
) -> PruneResult:
    """Result of a mask-based method: masks stay attached; details carry the achieved sparsity."""
    report = sparsity_report(model)
    names = {n for n, _ in target_layers(model, opts)}
    details.update(
        {
            "sparsity": global_sparsity(model, opts["keep_first"], opts["keep_last"]),
            "layer_sparsity": {n: s for n, s in report.items() if n in names},
        }
    )
    return PruneResult(model=model, structured=False, details=details, finetuned_epochs=finetuned_epochs)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG (CPU and, if used, the CUDA device) inside the block; restore it afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
