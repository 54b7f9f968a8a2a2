"""What every pruning method shares: the caller's context, the result, the registry, option and ratio checks.

The split follows Torch-Pruning: a method decides *what* to remove (an importance: magnitude, LAMP score,
ThiNet reconstruction error, ...) and uses one of two removers: `torch.nn.utils.prune` masks (unstructured,
see `masks.py`) or Torch-Pruning's DependencyGraph (channels physically removed, see `channels.py`).
Adding a method is one file with a `@register_method("name")` class; the CLI only queries the registry.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .channels import ScopeError
from .masks import make_permanent


@dataclass
class PruneContext:
    """What the caller (the training code) gives a method."""

    example_input: Tensor  # (1, 3, 32, 32) on device
    calibration_batches: Callable[[], Iterable[tuple[Tensor, Tensor]]]  # normalised train batches, no augm.
    evaluate: Callable[[nn.Module], float]  # validation accuracy in [0, 1]
    finetune: Callable[..., None]  # finetune(model, epochs, step_callback=None); epochs=0 is a no-op
    device: torch.device = torch.device("cpu")
    log: Callable[[str], None] = print


@dataclass
class PruneResult:
    """`model`: the pruned module. Unstructured methods return it with masks attached (`weight_orig` +
    `weight_mask`); call `make_permanent` after fine-tuning. Structured ones return a smaller module."""

    model: nn.Module
    structured: bool
    details: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure
    finetuned_epochs: float = 0.0  # epochs of ctx.finetune the method itself spent
    seconds: float = 0.0  # wall time of the pruning step, excluding the method's own ctx.finetune time


def validate_ratio(ratio: Any, name: str = "ratio") -> float:
    """0 <= ratio < 1, as a float; anything else (NaN, inf, out of range, not a number) -> ValueError."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1), got {ratio!r}") from None
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {ratio!r}")
    return value


def _coerce(method: str, key: str, value: Any, default: Any, choices: tuple[str, ...] | None) -> Any:
    """Convert a CLI string (or a Python value) to the type of the option's default."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                value = value.lower() in ("true", "1", "yes")
            value = bool(value)
        elif isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            value = int(value)
        elif isinstance(default, float):
            value = float(value)
            if math.isnan(value):
                raise ValueError(value)
        elif isinstance(default, tuple):
            items = value.split(",") if isinstance(value, str) else value
            value = tuple(float(v) for v in items)
        else:
            value = str(value)
    except (TypeError, ValueError):
        kind = type(default).__name__
        raise ValueError(f"{method}: option {key}={value!r} is not a valid {kind}") from None
    if choices is not None and value not in choices:
        raise ValueError(f"{method}: option {key}={value!r} must be one of {', '.join(choices)}")
    return value


class PruningMethod:
    """Base class. Subclasses set `name`, `structured`, `params` (option -> default), optional `choices`
    (option -> allowed strings) and implement `_prune`. `prune` validates, copies the model (the caller's
    model is never modified), folds any masks it already has, times the step and fills the result."""

    name: ClassVar[str] = ""
    structured: ClassVar[bool] = False
    changes_architecture: ClassVar[bool] = False  # True when the result must be saved with its spec
    ratio_kind: ClassVar[str] = "weights"  # what `ratio` removes: weights | channels | params
    params: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    minimums: ClassVar[dict[str, float]] = {}  # option -> smallest allowed value (numeric options)
    summary: ClassVar[str] = ""

    def resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.params))
        if unknown:
            known = ", ".join(self.params) or "none"
            raise ValueError(f"{self.name}: unknown option(s) {', '.join(unknown)}; known: {known}")
        resolved = dict(self.params)
        for key, value in options.items():
            resolved[key] = _coerce(self.name, key, value, self.params[key], self.choices.get(key))
        for key, low in self.minimums.items():
            if resolved[key] < low:
                raise ValueError(f"{self.name}: option {key}={resolved[key]!r} must be >= {low:g}")
        return resolved

    def prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **options: Any) -> PruneResult:
        ratio = validate_ratio(ratio)
        opts = self.resolve_options(options)
        self.check_model(model, opts)
        model = copy.deepcopy(model)
        make_permanent(model)
        timer = _FinetuneTimer(ctx.finetune)
        start = time.perf_counter()
        try:
            result = self._prune(model, ratio, dataclasses.replace(ctx, finetune=timer), **opts)
        except ScopeError as err:  # a model this method cannot cut: one line naming the method and the layer
            raise type(err)(f"{self.name}: {err}") from None
        wall = time.perf_counter() - start
        result.seconds = wall - timer.seconds
        result.details.setdefault("method", self.name)
        result.details.setdefault("ratio", ratio)
        result.details.setdefault(
            "options", {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()}
        )
        result.details["wall_seconds"] = wall
        result.details["finetune_seconds"] = timer.seconds
        return result

    def check_model(self, model: nn.Module, options: dict[str, Any]) -> None:
        """Refuse (ValueError, one line) a model this method cannot prune with these resolved options, before any
        work is done (the prune job calls it before it starts a run). Default: nothing to check."""

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<pruning method {self.name!r} structured={self.structured} params={self.params}>"


class _FinetuneTimer:
    """Wraps ctx.finetune so a method's own fine-tuning time is not counted as pruning time."""

    def __init__(self, finetune: Callable[..., None]):
        self.finetune = finetune
        self.seconds = 0.0

    def __call__(self, model: nn.Module, epochs: float, step_callback: Callable | None = None) -> None:
        start = time.perf_counter()
        try:
            if epochs > 0:
                self.finetune(model, epochs, step_callback=step_callback)
        finally:
            self.seconds += time.perf_counter() - start


_REGISTRY: dict[str, type[PruningMethod]] = {}


def register_method(name: str) -> Callable[[type[PruningMethod]], type[PruningMethod]]:
    """Class decorator: `@register_method("lamp") class Lamp(PruningMethod): ...`."""

    def decorate(cls: type[PruningMethod]) -> type[PruningMethod]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"pruning method {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def known_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> PruningMethod:
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(known_methods())}")
    return _REGISTRY[name]()
