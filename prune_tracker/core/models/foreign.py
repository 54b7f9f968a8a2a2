"""Models prune-tracker did not build: any `nn.Module` another tool logged (an `mlflow.pytorch` model).

Such a model is pruned as it is. Its architecture is named `foreign:<module>.<class>`; its spec records the layer
widths (for the record) and the input shape, but it cannot be rebuilt from the spec: only its own code can build
it, so it is logged (and reloaded) as a pickled module plus its state_dict. The input shape its footprint is
measured with comes from its MLflow signature, else an `input_shape` option, else the dataset's images.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

PREFIX = "foreign:"


class ForeignModelError(ValueError):
    """A foreign model asked to do what only its own code can (be built or rebuilt from a spec)."""


def is_foreign_arch(arch: str | None) -> bool:
    return bool(arch) and arch.startswith(PREFIX)


def foreign_arch(model: nn.Module) -> str:
    """`foreign:<module>.<qualified class name>` of a model built outside prune-tracker."""
    cls = type(model)
    return f"{PREFIX}{cls.__module__}.{cls.__qualname__}"


def refuse_rebuild(arch: str) -> ForeignModelError:
    return ForeignModelError(f"arch {arch!r} is a model logged by another tool: only its own code builds it, so it "
                             "loads as a pickled module (mlflow.pytorch) with its state_dict, never from a spec")


def parse_input_shape(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """`3,32,32` / `3x32x32` / a sequence -> (3, 32, 32), the shape of one image (no batch dimension); None or ""
    -> None. Anything else is a one-line error."""
    if text is None or text == "":
        return None
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p] if isinstance(text, str) else list(text)
    try:
        shape = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"input_shape={text!r} must be the shape of one image as positive integers, e.g. 3,32,32")
    return shape


def shape_text(shape: Sequence[int] | None) -> str:
    return "x".join(str(d) for d in shape) if shape else "unknown"


def check_runs_on(model: nn.Module, images: torch.Tensor, num_classes: int, origin: str,
                  expected: Sequence[int] | None = None) -> None:
    """A forward pass of `model` (eval, no grad) on a batch of the dataset's (normalised) images must give
    (batch, num_classes) logits; otherwise one line with the model's expected input shape and the data's."""
    was_training = model.training
    model.eval()
    data = shape_text(images.shape[1:])
    try:
        with torch.no_grad():
            out = model(images)
    except Exception as err:  # noqa: BLE001 - any failure of foreign code is reported the same way
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{origin}: its forward fails on the dataset's images of shape {data} (the model expects "
                         f"{shape_text(expected)}): {first}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(images), num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{origin}: on the dataset's images of shape {data} (the model expects "
                         f"{shape_text(expected)}) it returns {got}, not ({len(images)}, {num_classes}) logits")
