"""Mask helpers on top of `torch.nn.utils.prune`.

While a mask is attached a layer holds `weight_orig` (trained) and `weight_mask` (buffer) and a forward
pre-hook recomputes `weight = weight_orig * weight_mask`, so momentum and weight decay cannot revive a
pruned entry (Han et al. 2015 Sec. 3.2 re-apply the mask; PyTorch prune docs). `make_permanent` folds the
mask into a plain `weight` with zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from .layers import prunable_layers


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    return hasattr(module, f"{name}_mask") and hasattr(module, f"{name}_orig")


def current_weight(module: nn.Module) -> Tensor:
    """The effective weight (`weight_orig * weight_mask` when masked; recomputed, never stale)."""
    if is_masked(module):
        return module.weight_orig.detach() * module.weight_mask
    return module.weight.detach()


@torch.no_grad()
def set_mask(module: nn.Module, mask: Tensor, monotone: bool = True) -> None:
    """Attach `mask` (1 = keep) to `module.weight`, or replace the attached one in place. With `monotone`
    the new mask is AND-ed with the old one, so a pruned weight never comes back. Pruned entries of
    `weight_orig` are zeroed as well, so magnitude scores and state_dicts agree."""
    mask = mask.to(dtype=module.weight.dtype, device=module.weight.device)
    if is_masked(module):
        if monotone:
            mask = mask * module.weight_mask
        module.weight_mask.copy_(mask)
    else:
        prune.custom_from_mask(module, "weight", mask)
    module.weight_orig.mul_(module.weight_mask)
    module.weight = module.weight_orig * module.weight_mask


def apply_masks(layers: list[tuple[str, nn.Module]], masks: list[Tensor]) -> None:
    """`set_mask` on each layer with its keep-mask."""
    for (_, module), mask in zip(layers, masks, strict=True):
        set_mask(module, mask)


def attach_identity_masks(layers: list[tuple[str, nn.Module]]) -> None:
    """All-ones masks, so the layers hold weight_orig/weight_mask from the start (GMP)."""
    for _, module in layers:
        if not is_masked(module):
            prune.identity(module, "weight")


def make_permanent(model: nn.Module) -> nn.Module:
    """`prune.remove` on every masked parameter: the state_dict then has plain `weight` with zeros."""
    for module in model.modules():
        for key in [k for k, _ in module.named_buffers(recurse=False) if k.endswith("_mask")]:
            name = key[: -len("_mask")]
            if hasattr(module, f"{name}_orig"):
                prune.remove(module, name)
    return model


def keep_top_k(scores: Tensor, keep: int) -> Tensor:
    """Mask (same shape as scores) keeping the `keep` largest scores."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if keep > 0:
        mask[torch.topk(scores.flatten(), keep, sorted=False).indices] = True
    return mask.view_as(scores)


def global_masks(layers: list[tuple[str, nn.Module]], scores: list[Tensor], n_prune: int) -> list[Tensor]:
    """Prune the `n_prune` lowest scores over all layers together; returns one keep-mask per layer."""
    flat = torch.cat([s.flatten() for s in scores])
    keep = keep_top_k(flat, flat.numel() - n_prune)
    masks, start = [], 0
    for score in scores:
        masks.append(keep[start : start + score.numel()].view_as(score))
        start += score.numel()
    return masks


def sparsity_report(model: nn.Module) -> dict[str, float]:
    """Zero fraction of the weight of every Conv2d / Linear layer (masked or not)."""
    return {
        name: float((current_weight(m) == 0).float().mean())
        for name, m in prunable_layers(model, keep_first=False, keep_last=False)
    }


def global_sparsity(model: nn.Module, keep_first: bool = True, keep_last: bool = True) -> float:
    """Zero fraction over the prunable weights (by default without stem conv and classifier)."""
    layers = prunable_layers(model, keep_first, keep_last)
    zeros = sum(int((current_weight(m) == 0).sum()) for _, m in layers)
    total = sum(current_weight(m).numel() for _, m in layers)
    return zeros / total if total else 0.0


def count_nonzero_params(model: nn.Module) -> int:
    """Non-zero entries over all parameters (masked weights counted as their effective value)."""
    total = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name.endswith("_orig"):
                base = name[: -len("_orig")]
                total += int((param.detach() * getattr(module, f"{base}_mask") != 0).sum())
            else:
                total += int((param.detach() != 0).sum())
    return total


def reattach_masks(model: nn.Module) -> int:
    """Re-create torch.nn.utils.prune masks from the zeros of an unstructured-pruned model, so fine-tuning
    keeps pruned weights at exactly zero. Returns the number of masked layers."""
    masked = 0
    for _, module in prunable_layers(model, keep_first=False, keep_last=False):
        if not torch.all(module.weight != 0):
            prune.custom_from_mask(module, "weight", (module.weight != 0).to(module.weight.dtype))
            masked += 1
    return masked
