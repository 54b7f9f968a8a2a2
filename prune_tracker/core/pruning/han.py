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
  method spends (R-1) * round_epochs epochs itself. This is `iterative.run_rounds` (the loop every method
  gets from `iterative_prune`) with a per-layer magnitude cut and `finetune_last=False`;
  `iterative_prune(han, ...)` makes one such cut per round (`prunes_in_rounds`).
- Pruned weights stay masked (Sec. 3.2): masks are AND-ed round after round, never revived.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import PruneContext, PruneResult, PruningMethod, register_method
from .common import LAYER_OPTIONS, target_layers, unstructured_result
from .iterative import RoundPlan, round_targets, run_rounds
from .masks import current_weight, global_sparsity, keep_top_k, set_mask


def han_schedule(ratio: float, rounds: int) -> list[float]:
    """Cumulative per-layer sparsity after each round: 1 - (1-ratio)^(k/rounds), k = 1..rounds."""
    return round_targets(ratio, rounds)


def prune_layer_to(module: nn.Module, sparsity: float) -> None:
    """Mask the smallest |w| of one layer so that round(sparsity * n) entries are zero."""
    weight = current_weight(module)
    keep = weight.numel() - int(round(sparsity * weight.numel()))
    set_mask(module, keep_top_k(weight.abs(), keep))


@register_method("han")
class Han(PruningMethod):
    structured = False
    prunes_in_rounds = True  # iterative_prune runs it with rounds=1, round_epochs=0 in each of its rounds
    params = {**LAYER_OPTIONS, "rounds": 3, "round_epochs": 1.0}
    summary = "iterative per-layer magnitude prune + retrain (Han et al. 2015)"

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        if opts["rounds"] < 1 or opts["round_epochs"] < 0:
            raise ValueError(f"han: rounds must be >= 1 and round_epochs >= 0, got {opts}")
        layers = target_layers(model, opts)
        schedule = han_schedule(ratio, opts["rounds"])

        def cut(pruned: nn.Module, _round: int, sparsity: float) -> nn.Module:
            for _, module in layers:
                prune_layer_to(module, sparsity)
            return pruned

        def measure(pruned: nn.Module) -> float:
            return global_sparsity(pruned, opts["keep_first"], opts["keep_last"])

        model, _, spent = run_rounds(model, schedule, cut, ctx, measure,
                                     RoundPlan(opts["rounds"], opts["round_epochs"], finetune_last=False), label="han")
        return unstructured_result(model, opts, finetuned_epochs=spent, schedule=schedule)
