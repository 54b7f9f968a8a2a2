"""`han`: iterative prune-and-retrain of Han et al. 2015 ("Learning both Weights and Connections").

Why: the reference unstructured method; iterating prune -> retrain beats one shot (Sec. 3.4: AlexNet 5x
-> 9x) because the network re-settles before the next cut.

Choices (documented, since the paper leaves them to a sensitivity scan):
- Threshold: per-layer *ratio* rather than quality x std (Sec. 4). For a roughly Gaussian layer a threshold
  q*std removes a fixed fraction of it, so an equal ratio in every layer is the equal-q case, and it hits
  the requested sparsity exactly without a per-layer search. Stem conv and classifier are kept dense by
  default (the most sensitive layers, Sec. 5).
- Schedule: round k of R prunes each layer to s_k = 1 - (1 - ratio)^(k/R): the same fraction of the
  surviving weights each round, ending exactly at `ratio`. Between rounds the model is retrained for
  `round_epochs` (ctx.finetune); the caller's fine-tune is the retraining after the last round, so the
  method spends (R-1) * round_epochs epochs itself.
- Pruned weights stay masked (Sec. 3.2): masks are AND-ed round after round, never revived.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import PruneContext, PruneResult, PruningMethod, register_method
from .common import LAYER_OPTIONS, target_layers, unstructured_result
from .masks import current_weight, keep_top_k, set_mask


def han_schedule(ratio: float, rounds: int) -> list[float]:
    """Cumulative per-layer sparsity after each round: 1 - (1-ratio)^(k/rounds), k = 1..rounds."""
    return [1.0 - (1.0 - ratio) ** (k / rounds) for k in range(1, rounds + 1)]


def prune_layer_to(module: nn.Module, sparsity: float) -> None:
    """Mask the smallest |w| of one layer so that round(sparsity * n) entries are zero."""
    weight = current_weight(module)
    keep = weight.numel() - int(round(sparsity * weight.numel()))
    set_mask(module, keep_top_k(weight.abs(), keep))


@register_method("han")
class Han(PruningMethod):
    structured = False
    params = {**LAYER_OPTIONS, "rounds": 3, "round_epochs": 1.0}
    summary = "iterative per-layer magnitude prune + retrain (Han et al. 2015)"

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        if opts["rounds"] < 1 or opts["round_epochs"] < 0:
            raise ValueError(f"han: rounds must be >= 1 and round_epochs >= 0, got {opts}")
        layers = target_layers(model, opts)
        schedule = han_schedule(ratio, opts["rounds"])
        spent = 0.0
        for k, sparsity in enumerate(schedule):
            for _, module in layers:
                prune_layer_to(module, sparsity)
            ctx.log(f"han: round {k + 1}/{len(schedule)} per-layer sparsity {sparsity:.3f}")
            if k + 1 < len(schedule) and opts["round_epochs"] > 0:
                ctx.finetune(model, opts["round_epochs"])
                spent += opts["round_epochs"]
        return unstructured_result(model, opts, finetuned_epochs=spent, schedule=schedule)
