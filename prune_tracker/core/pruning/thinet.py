"""`thinet`: ThiNet (Luo et al., ICCV 2017; TPAMI 2018): prune layer i by what layer i+1 can rebuild.

Why: L1 norms look at a filter in isolation; ThiNet keeps the channel subset whose contributions best
reproduce the *next* layer's output on real data, then refits scales by least squares, so redundant (e.g.
duplicated or unread) channels go first and the cut loses less before fine-tuning.

Per scope layer i (block-internal conv1 / VGG conv; see `channels.py`) with consumer conv i+1:
- X: what conv i+1 reads (after BN + ReLU of layer i, after pooling if any; captured with a forward
  pre-hook on conv i+1, padded as it pads). Sampled rows: `per_image` random (out-filter f, position)
  draws per image over ceil(samples / per_image) calibration images (ICCV code: 10 draws per image).
  x_c = sum_{kh,kw} W[f, c] * Xpatch[c]; y = sum_c x_c (raw output of conv i+1 minus bias).
- Greedy (ICCV Sec. 3.2, Alg. 1): grow the removal set T, each step adding the channel minimising
  ||sum_{c in T} x_c||^2, until |T| = round(C * ratio). Vectorised: with the running sum s,
  ||s + x_c||^2 = ||s||^2 + 2 s.x_c + ||x_c||^2 for all candidates at once.
- Least squares (Sec. 3.3): w = argmin ||y - X_S w||^2 (torch.linalg.lstsq) over kept channels, folded
  into conv i+1's kept input kernels (`rescale`). The next BN's statistics are left as they are.
- Filters removed through the DependencyGraph (as `li_filters`); optional `layer_epochs` of fine-tuning
  between layers (ICCV fine-tunes after each layer; default 0, the caller fine-tunes at the end).
Layers whose consumer is not a Conv2d (VGG's last conv, read by the classifier) are left unpruned.
Ratio: fraction of filters removed in each pruned layer (per stage for the stage cut).

`scope` (block | stage | all, see `stages.py`): the stage cut of option-A CIFAR ResNets samples the rows
above for EVERY layer that reads a stage (conv1 of its blocks, the next stage's first conv1, or the final
Linear: x_c = W[f, c] * pooled[n, c]), stacks them, and runs the ICCV greedy over the coupled channel
chains on the summed criterion sum_consumers ||sum_{c in T} x_c||^2 (one running sum across all stages
and selection groups), then refits and folds least-squares scales into each consumer separately. The
identity/zero-pad shortcut paths also read the stage channels; they have no weights and are not
reconstructed (a documented simplification).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import PruneContext, PruneResult, PruningMethod, register_method
from .channels import ChannelLayer, ChannelPruner, channel_scope, n_remove
from .layers import channels_per_layer
from .stages import (
    SCOPE_CHOICES,
    SCOPE_OPTIONS,
    ChainGroup,
    Selector,
    check_scope,
    cifar_stages,
    cut_stages,
    plan_stage_cut,
    stage_details,
)
from .structured import STRUCTURED_OPTIONS, structured_result


class _Captured(Exception):
    pass


@torch.no_grad()
def consumer_inputs(
    model: nn.Module, consumer: nn.Module, ctx: PruneContext, n_images: int, name: str = "the consumer conv"
) -> Tensor:
    """Inputs of `consumer` (called `name` in errors) for the first `n_images` calibration images (forward
    stopped at it). ValueError when there are no images or the forward pass never reaches `consumer`."""
    chunks: list[Tensor] = []

    def hook(_module: nn.Module, args: tuple) -> None:
        chunks.append(args[0].detach())
        raise _Captured

    handle = consumer.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    try:
        count = 0
        for images, _ in ctx.calibration_batches():
            if len(images) == 0:
                continue
            fired = len(chunks)
            with contextlib.suppress(_Captured):
                model(images[: n_images - count].to(ctx.device))
            if len(chunks) == fired:
                raise ValueError(f"thinet: {name} never ran in the model's forward pass; cannot sample its inputs")
            count += chunks[-1].shape[0]
            if count >= n_images:
                break
    finally:
        handle.remove()
        model.train(was_training)
    if not chunks:
        raise ValueError(f"thinet: calibration_batches yielded no images to sample the inputs of {name}")
    return torch.cat(chunks)


def _pads(conv: nn.Conv2d) -> tuple[int, int]:
    if isinstance(conv.padding, str) or conv.groups != 1:
        raise ValueError("thinet: consumer convs need numeric padding and groups=1")
    return conv.padding


def draw_positions(inputs: Tensor, conv: nn.Conv2d, per_image: int,
                   gen: torch.Generator) -> tuple[Tensor, ...]:
    """(image n, out-filter f, out-row h, out-col w) for `per_image` random draws per image (CPU tensors)."""
    (ph, pw), (kh, kw), (sh, sw), (dh, dw) = _pads(conv), conv.kernel_size, conv.stride, conv.dilation
    out_h = (inputs.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (inputs.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    m = inputs.shape[0] * per_image
    n = torch.arange(inputs.shape[0]).repeat_interleave(per_image)
    f = torch.randint(conv.out_channels, (m,), generator=gen)
    return n, f, torch.randint(out_h, (m,), generator=gen), torch.randint(out_w, (m,), generator=gen)


def contributions(inputs: Tensor, conv: nn.Conv2d, n: Tensor, f: Tensor, h: Tensor, w: Tensor) -> Tensor:
    """Rows x[m, c] = sum_{kh,kw} W[f_m, c] * Xpad[n_m, c, patch at (h_m, w_m)]; sum_c x = conv output
    at (n, f, h, w) minus bias."""
    (ph, pw), (kh, kw), (sh, sw), (dh, dw) = _pads(conv), conv.kernel_size, conv.stride, conv.dilation
    x = F.pad(inputs, (pw, pw, ph, ph))
    dev = inputs.device
    rows = ((h * sh)[:, None] + torch.arange(kh) * dh).to(dev)  # (m, kh)
    cols = ((w * sw)[:, None] + torch.arange(kw) * dw).to(dev)  # (m, kw)
    patches = x[n.to(dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (m, kh, kw, C)
    return torch.einsum("mhwc,mchw->mc", patches.float(), conv.weight.detach()[f.to(dev)].float())


def sample_contributions(inputs: Tensor, conv: nn.Conv2d, per_image: int, gen: torch.Generator) -> Tensor:
    return contributions(inputs, conv, *draw_positions(inputs, conv, per_image, gen))


def linear_contributions(inputs: Tensor, linear: nn.Linear, per_image: int, gen: torch.Generator) -> Tensor:
    """Rows x[m, c] = W[f_m, c] * inputs[n_m, c] for `per_image` random out-features f per image; sum_c x
    = the Linear's output at (n, f) minus bias. `inputs`: (N, in_features)."""
    n = torch.arange(inputs.shape[0]).repeat_interleave(per_image)
    f = torch.randint(linear.out_features, (len(n),), generator=gen)
    dev = inputs.device
    return inputs.float()[n.to(dev)] * linear.weight.detach().float()[f.to(dev)]


def greedy_removal(x: Tensor, k: int) -> list[int]:
    """ICCV greedy: grow T (size k), each step adding argmin_c ||sum_{T} x + x_c||^2. x: (rows, C)."""
    x = x.double()
    sq = (x * x).sum(0)
    running = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    taken = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
    removed = []
    for _ in range(k):
        cost = 2 * (running @ x) + sq  # ||s + x_c||^2 - ||s||^2, all candidates at once
        cost[taken] = math.inf
        c = int(torch.argmin(cost))
        removed.append(c)
        taken[c] = True
        running += x[:, c]
    return removed


def least_squares_scales(x: Tensor, kept: list[int]) -> Tensor:
    """w = argmin ||y - X_S w||^2 with y = sum over all channels (ICCV Sec. 3.3)."""
    y = x.double().sum(1, keepdim=True)
    xs = x.double()[:, kept]
    return torch.linalg.lstsq(xs.cpu(), y.cpu()).solution.squeeze(1).to(x.device)


def relative_error(x: Tensor, kept: list[int], scales: Tensor) -> float:
    y = x.double().sum(1)
    return float(((y - x.double()[:, kept] @ scales.double()) ** 2).sum() / (y**2).sum().clamp_min(1e-30))


def thin_layer(
    model: nn.Module,
    layer: ChannelLayer,
    pruner: ChannelPruner,
    ratio: float,
    ctx: PruneContext,
    opts: dict[str, Any],
    gen: torch.Generator,
) -> tuple[list[int], dict[str, float]]:
    """Select, remove and rescale one layer; returns kept indices and reconstruction errors."""
    c = layer.conv.out_channels
    k = n_remove(c, ratio)
    n_images = math.ceil(opts["samples"] / opts["per_image"])
    x = sample_contributions(
        consumer_inputs(model, layer.consumer, ctx, n_images, f"{layer.consumer_name} (reads {layer.name})"),
        layer.consumer,
        opts["per_image"],
        gen,
    )
    removed = greedy_removal(x, k)
    kept = [i for i in range(c) if i not in set(removed)]
    ones = torch.ones(len(kept), dtype=torch.float64, device=x.device)
    scales = least_squares_scales(x, kept) if opts["rescale"] else ones
    errors = {
        "error_no_rescale": relative_error(x, kept, ones),
        "error": relative_error(x, kept, scales),
        "rows": x.shape[0],
    }
    pruner.remove(layer, removed)
    with torch.no_grad():
        w = layer.consumer.weight
        w.mul_(scales.to(w.dtype).view(1, -1, 1, 1))
    return kept, errors


def stage_selector(rows: list[Tensor]) -> Selector:
    """ICCV greedy over chains of coupled stage channels; rows[s]: (rows_s, C_s) contributions of every
    consumer of stage s stacked. One running sum per stage, kept across the selection groups."""
    xs = [x.double() for x in rows]
    running = [torch.zeros(x.shape[0], dtype=x.dtype, device=x.device) for x in xs]

    def select(group: ChainGroup) -> list[int]:
        if not group.chains or group.k == 0:
            return []
        span = [t for t, _ in group.chains[0]]
        cols = {t: xs[t][:, [c[i][1] for c in group.chains]] for i, t in enumerate(span)}
        sq = sum((cols[t] * cols[t]).sum(0) for t in span)
        taken = torch.zeros(len(group.chains), dtype=torch.bool)
        picked = []
        for _ in range(group.k):
            cost = (sq + sum(2 * (running[t] @ cols[t]) for t in span)).cpu()
            cost[taken] = math.inf
            i = int(torch.argmin(cost))
            picked.append(i)
            taken[i] = True
            for t in span:
                running[t] += cols[t][:, i]
        return picked

    return select


def thin_stages(
    model: nn.Module, ratio: float, ctx: PruneContext, opts: dict[str, Any], gen: torch.Generator
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Stage cut by the summed reconstruction criterion (module docstring); returns the stage details and
    the reconstruction errors per consumer."""
    stages = cifar_stages(model)
    n_images = math.ceil(opts["samples"] / opts["per_image"])
    per_consumer: list[list[tuple[str, nn.Module, Tensor]]] = []
    for stage in stages:
        found = []
        for name, consumer in stage.consumers:
            inputs = consumer_inputs(model, consumer, ctx, n_images, f"{name} (reads {stage.name})")
            if isinstance(consumer, nn.Conv2d):
                x = sample_contributions(inputs, consumer, opts["per_image"], gen)
            else:
                x = linear_contributions(inputs.flatten(1), consumer, opts["per_image"], gen)
            found.append((name, consumer, x))
        per_consumer.append(found)
    rows = [torch.cat([x for _, _, x in found]) for found in per_consumer]
    names, widths = [s.name for s in stages], [s.width for s in stages]
    removed = plan_stage_cut(stages, ratio, stage_selector(rows))
    kept = cut_stages(model, removed, ctx.example_input)
    errors = {}
    for found, keep, idxs in zip(per_consumer, kept, removed, strict=True):
        if not idxs:
            continue
        for name, consumer, x in found:
            ones = torch.ones(len(keep), dtype=torch.float64, device=x.device)
            scales = least_squares_scales(x, keep) if opts["rescale"] else ones
            errors[name] = {"error_no_rescale": relative_error(x, keep, ones),
                            "error": relative_error(x, keep, scales), "rows": x.shape[0]}
            with torch.no_grad():
                w = consumer.weight
                w.mul_(scales.to(w.dtype).view(1, -1, *([1] * (w.dim() - 2))))
    return stage_details(names, widths, kept), errors


@register_method("thinet")
class ThiNet(PruningMethod):
    structured = True
    changes_architecture = True
    ratio_kind = "channels"
    params = {
        **STRUCTURED_OPTIONS,
        **SCOPE_OPTIONS,
        "samples": 5000,
        "per_image": 10,
        "rescale": True,
        "layer_epochs": 0.0,
        "seed": 0,
    }
    choices = SCOPE_CHOICES
    summary = "ThiNet: channels chosen by next-layer reconstruction + least squares (Luo et al. 2017)"

    def _prune(self, model: nn.Module, ratio: float, ctx: PruneContext, **opts: Any) -> PruneResult:
        if opts["samples"] < 1 or opts["per_image"] < 1:
            raise ValueError("thinet: samples and per_image must be >= 1")
        staged = check_scope(model, opts["scope"], self.name)
        scope = channel_scope(model, opts["skip_last"]) if opts["scope"] != "stage" else []
        layers = [lay for lay in scope if isinstance(lay.consumer, nn.Conv2d)]
        before = channels_per_layer(model)
        pruner = ChannelPruner(model, ctx.example_input) if layers else None
        gen = torch.Generator().manual_seed(opts["seed"])
        kept, errors, spent = {}, {}, 0.0
        for i, layer in enumerate(layers):
            if n_remove(layer.conv.out_channels, ratio) == 0:
                continue
            kept[layer.name], errors[layer.name] = thin_layer(model, layer, pruner, ratio, ctx, opts, gen)
            ctx.log(
                f"thinet {layer.name}: kept {len(kept[layer.name])}, rel. error "
                f"{errors[layer.name]['error_no_rescale']:.4f} -> {errors[layer.name]['error']:.4f}"
            )
            if opts["layer_epochs"] > 0 and i + 1 < len(layers):
                ctx.finetune(model, opts["layer_epochs"])
                spent += opts["layer_epochs"]
        details: dict[str, Any] = {}
        if pruner is not None:
            pruner.check_forward()
        if staged:
            details["stages"], stage_errors = thin_stages(model, ratio, ctx, opts, gen)
            errors.update(stage_errors)
            for name, e in stage_errors.items():
                ctx.log(f"thinet stage cut, {name}: rel. error {e['error_no_rescale']:.4f} -> {e['error']:.4f}")
        return structured_result(
            model, layers, before, kept, finetuned_epochs=spent, reconstruction=errors, **details
        )
