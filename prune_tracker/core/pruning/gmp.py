"""`gmp`: gradual magnitude pruning during fine-tuning (Zhu & Gupta 2017, "To prune, or not to prune").

Why: pruning a little at a time while training lets the network recover between steps; at equal sparsity
it beats one-shot pruning + the same fine-tuning budget, with no extra hyper-parameter search (Methods).

Schedule (Methods, Eq. 1): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 for t = t0, t0 + dt, ...,
t0 + n dt. Here t counts optimizer steps of `ctx.finetune(model, epochs)`, t0 = 0 and the last pruning step
is at `end_fraction` of the run (the rest recovers with a fixed mask; Distiller ends pruning before the
last epoch too), dt = `frequency` steps (tfmot default 100), shortened to window // MIN_PRUNING_STEPS when
the pruning window is shorter than MIN_PRUNING_STEPS * frequency steps, so even a short fine-tune (e.g. 78
steps) prunes gradually instead of in one cut. Masks are updated from `step_callback` and
only ever grow (AND with the previous mask), so masked weights get no updates. After the run the mask is
set to exactly s_f, so the target is reached even if the run had fewer steps than the schedule expects.
`scope`: `global` (one magnitude threshold) or `layer` (each layer at s_t).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from .base import PruneContext, PruneResult, PruningMethod, register_method
from .common import LAYER_OPTIONS, global_amount, target_layers, unstructured_result
from .han import prune_layer_to
from .masks import apply_masks, attach_identity_masks, current_weight, global_masks

MIN_PRUNING_STEPS = 10


def effective_frequency(frequency: int, window: int) -> int:
    """Steps between mask updates: `frequency`, but at least MIN_PRUNING_STEPS updates in `window` steps
    (every step when the window is shorter than that)."""
    return max(1, min(frequency, window // MIN_PRUNING_STEPS))


def gmp_sparsity(
    step: int,
    total_steps: int,
    final: float,
    initial: float = 0.0,
    frequency: int = 100,
    end_fraction: float = 0.75,
) -> float:
    """Cubic schedule of Zhu & Gupta, evaluated at the last pruning step <= `step`. Non-decreasing in
    `step`; equals `initial` at step 0 and `final` from step ceil(end_fraction * total_steps) on."""
    end = max(1, math.ceil(end_fraction * total_steps))
    if step >= end:
        return final
    dt = effective_frequency(frequency, end)
    t = (step // dt) * dt
    return final + (initial - final) * (1.0 - t / end) ** 3


def prune_to(layers: list[tuple[str, nn.Module]], sparsity: float, scope: str) -> None:
    if scope == "layer":
        for _, module in layers:
            prune_layer_to(module, sparsity)
        return
    scores = [current_weight(m).abs() for _, m in layers]
    apply_masks(layers, global_masks(layers, scores, global_amount(layers, sparsity)))


@register_method("gmp")
class GradualMagnitude(PruningMethod):
    structured = False
    params = {
        **LAYER_OPTIONS,
        "epochs": 2.0,
        "frequency": 100,
        "initial_sparsity": 0.0,
        "end_fraction": 0.75,
        "scope": "global",
    }
    choices = {"scope": ("global", "layer")}
    summary = "gradual magnitude pruning during fine-tuning, cubic schedule (Zhu & Gupta 2017)"

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        if not 0 <= opts["initial_sparsity"] <= ratio or not 0 < opts["end_fraction"] <= 1:
            raise ValueError("gmp: need 0 <= initial_sparsity <= ratio and 0 < end_fraction <= 1")
        layers = target_layers(model, opts)
        attach_identity_masks(layers)
        prune_to(layers, opts["initial_sparsity"], opts["scope"])
        history: list[tuple[int, float]] = []

        def on_step(step: int, total_steps: int) -> None:
            s = gmp_sparsity(
                step, total_steps, ratio, opts["initial_sparsity"], opts["frequency"], opts["end_fraction"]
            )
            if not history or s > history[-1][1]:
                prune_to(layers, s, opts["scope"])
                history.append((step, s))

        ctx.finetune(model, opts["epochs"], step_callback=on_step)
        prune_to(layers, ratio, opts["scope"])
        return unstructured_result(
            model, opts, finetuned_epochs=opts["epochs"], mask_updates=len(history), schedule=history[:50]
        )
