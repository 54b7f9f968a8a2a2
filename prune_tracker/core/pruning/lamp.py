"""`lamp`: Layer-Adaptive Magnitude-based Pruning (Lee et al., ICLR 2021).

Why: global magnitude pruning lets one threshold empty small/sensitive layers, uniform per-layer pruning
ignores redundancy differences; LAMP rescales magnitudes per layer so a single global threshold gives a
layer-adaptive allocation and tends to beat both at high sparsity at equal parameter count (Sec. 3, 5).

Score (Sec. 3, Eq. 2): sort a layer's weights by ascending |w|; score(u) = w_u^2 / sum_{v >= u} w_v^2
(the denominator includes w_u). Prune the lowest scores globally. A layer's largest weight scores 1, so no
layer empties; it is additionally excluded from the candidates so it survives even at extreme ratios.
The official code (jaeho-lee/layer-adaptive-sparsity) scores first and last layers too; here they follow
the shared `keep_first` / `keep_last` options (default: kept dense, like the other methods).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import PruneContext, PruneResult, PruningMethod, register_method
from .common import LAYER_OPTIONS, global_amount, n_weights, target_layers, unstructured_result
from .masks import apply_masks, current_weight, global_masks


def lamp_scores(weight: Tensor) -> Tensor:
    """LAMP score of every entry of `weight` (same shape); the largest |w| gets exactly 1."""
    sq = weight.detach().flatten().double() ** 2
    order = torch.argsort(sq)  # ascending
    sorted_sq = sq[order]
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])  # sum_{v >= u}
    sorted_scores = torch.where(suffix > 0, sorted_sq / suffix.clamp_min(1e-300), torch.zeros_like(suffix))
    sorted_scores[-1] = 1.0
    scores = torch.empty_like(sorted_scores)
    scores[order] = sorted_scores
    return scores.view_as(weight).float()


def lamp_masks(layers: list[tuple[str, nn.Module]], n_prune: int) -> list[Tensor]:
    """Keep-masks removing the `n_prune` lowest LAMP scores over `layers`; each layer's max survives."""
    scores = []
    for _, module in layers:
        s = lamp_scores(current_weight(module))
        s.view(-1)[torch.argmax(current_weight(module).abs())] = float("inf")
        scores.append(s)
    n_prune = min(n_prune, n_weights(layers) - len(layers))
    return global_masks(layers, scores, n_prune)


@register_method("lamp")
class Lamp(PruningMethod):
    structured = False
    params = dict(LAYER_OPTIONS)
    summary = "LAMP layer-adaptive magnitude scores, pruned globally (Lee et al. 2021)"

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        layers = target_layers(model, opts)
        apply_masks(layers, lamp_masks(layers, global_amount(layers, ratio)))
        return unstructured_result(model, opts)
