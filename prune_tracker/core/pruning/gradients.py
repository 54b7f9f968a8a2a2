"""Gradients the data-driven importance criteria read, on a few calibration (training) batches.

The model is run in eval mode (BatchNorm uses its running statistics, which stay as they were; no dropout), so
scoring leaves the model unchanged apart from the `.grad` fields, which `clear_gradients` removes afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PruneContext


def _batches(ctx: PruneContext, method: str, limit: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Up to `limit` calibration batches on the context's device; ValueError (one line) when there is none."""
    seen = 0
    for images, labels in ctx.calibration_batches():
        if len(images) == 0:
            continue
        yield images.to(ctx.device), labels.to(ctx.device)
        seen += 1
        if seen == limit:
            return
    if seen == 0:
        raise ValueError(f"{method}: calibration_batches yielded no images; {method} scores channels by gradients "
                         "on training batches")


def accumulate_gradients(model: nn.Module, ctx: PruneContext, method: str, batches: int) -> None:
    """`.grad` of every parameter: the gradient of the cross-entropy summed over `batches` calibration batches
    (first-order Taylor: Molchanov et al. 2019)."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            for images, labels in _batches(ctx, method, batches):
                F.cross_entropy(model(images), labels).backward()
    finally:
        model.train(was_training)


def accumulate_squared_gradients(model: nn.Module, ctx: PruneContext, method: str, samples: int) -> None:
    """`.grad` of every parameter: the mean over `samples` calibration images of the squared per-image gradient
    of the cross-entropy (the empirical Fisher, the diagonal Hessian estimate of Optimal Brain Damage as
    Torch-Pruning's GroupHessianImportance uses it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    squares = [torch.zeros_like(p) for p in params]
    was_training = model.training
    model.eval()
    count = 0
    try:
        with torch.enable_grad():
            for images, labels in _batches(ctx, method, samples):
                for image, label in zip(images, labels, strict=True):
                    model.zero_grad(set_to_none=True)
                    F.cross_entropy(model(image[None]), label[None]).backward()
                    for square, param in zip(squares, params, strict=True):
                        if param.grad is not None:
                            square += param.grad.detach() ** 2
                    count += 1
                    if count == samples:
                        break
                if count == samples:
                    break
    finally:
        model.train(was_training)
    for square, param in zip(squares, params, strict=True):
        param.grad = square / count


def clear_gradients(model: nn.Module) -> None:
    model.zero_grad(set_to_none=True)
