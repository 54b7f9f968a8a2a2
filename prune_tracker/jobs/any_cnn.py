"""What the jobs need to handle any CNN a user brings (torchvision builders, models logged by another tool): the
input shape a model is measured with, a forward check on the dataset's images, copies and references that do not
need a spec.

Input shape (one image, no batch dimension): the model's own declaration (its spec, else its MLflow signature),
else the `input_shape` option, else the dataset's images. An option that contradicts the declaration is an error.
The footprint (activations, FLOPs, MicroNet), the latency, the pruning graph's example input and the logged
signature all use it; accuracy is always measured on the dataset's images as they are (never resized).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from prune_tracker import tracking
from prune_tracker.core.data import BatchLoader, DataSplits
from prune_tracker.core.flows import image_shape
from prune_tracker.core.models import build_model
from prune_tracker.core.models.foreign import check_runs_on, is_foreign_arch, parse_input_shape, shape_text


def resolve_input_shape(loaded: tracking.LoadedModel, splits: DataSplits,
                        requested: str | Sequence[int] | None) -> tuple[int, ...]:
    """The declared shape, else `requested` (`input_shape` option), else the dataset's image shape."""
    option = parse_input_shape(requested)
    declared = tuple(loaded.input_shape) if loaded.input_shape else None
    if option and declared and option != declared:
        raise ValueError(f"input_shape={shape_text(option)} conflicts with {loaded.uri!r}, whose signature declares "
                         f"{shape_text(declared)}; omit input_shape")
    return declared or option or image_shape(splits)


def sample_images(splits: DataSplits, count: int = 2):
    """`count` normalised images of the dataset (test split, else training), on the CPU."""
    images = splits.test if len(splits.test) else splits.train
    loader = BatchLoader(images, count, splits.mean, splits.std, device="cpu", channels_last=False)
    return next(iter(loader))[0]


def check_model_on_data(model: nn.Module, splits: DataSplits, origin: str,
                        expected: Sequence[int] | None = None) -> None:
    """One forward pass on two of the dataset's images must give (2, classes) logits; else one line with the
    shapes (the model's expected input, the data's)."""
    check_runs_on(model.cpu(), sample_images(splits), splits.num_classes, origin, expected)


def is_foreign(loaded: tracking.LoadedModel) -> bool:
    return is_foreign_arch(loaded.spec.get("arch"))


def copy_loaded(loaded: tracking.LoadedModel) -> nn.Module:
    """A fresh copy to prune or train: rebuilt from the spec (zoo, torchvision), or a deep copy of a foreign
    module (only its own code builds it)."""
    from prune_tracker.core.models import build_from_spec

    if is_foreign(loaded):
        return copy.deepcopy(loaded.model)
    model = build_from_spec(loaded.spec)
    model.load_state_dict(loaded.model.state_dict())
    return model


def unpruned_reference(loaded: tracking.LoadedModel, num_classes: int) -> nn.Module:
    """What a fine-tuned model's reductions are stated against: the unpruned architecture (zoo, torchvision), or
    for a foreign model, which cannot be built afresh, the model it was fine-tuned from."""
    if is_foreign(loaded):
        return loaded.model
    return build_model(loaded.spec["arch"], num_classes, width=float(loaded.spec.get("width", 1.0)))
