"""Stage-width channel pruning of option-A CIFAR ResNets (resnet20/32/56/110), by hand, checked.

Why: a block-internal cut (`channels.py`: conv1 of each block) leaves every block output at full width,
and the activation peak of a CIFAR ResNet sits at the block outputs of the first stage. Torch-Pruning's
DependencyGraph cannot cut those: it does not see the zero-padding shortcut as a channel dependency and
silently mis-prunes the model (the padded channels no longer line up). The structure is known, so the cut is
done here by hand and verified.

Coupling. Within a stage the residual additions tie every block output to the same channel index: a
stage channel q is written by the stem conv/BN (stage 1) and by conv2/bn2 of every block of the stage,
and read by conv1 of every block whose input is that stage (the stage's own blocks, the next stage's
first block) and by its zero-pad shortcut, or by the final Linear (last stage). The zero-pad shortcut
adds stage s channel q onto stage s+1 channel q + L, with L = (C_{s+1} - C_s) // 2 (the padding is
centred). So stage channels form *chains* (s, q) -> (s+1, q + L_{s+1}) -> ... -> last stage, and a chain
is removed as a whole: removing stage s channel q also removes its images in every later stage (it is
the channel the shortcut carries there). This keeps the padding law, so the cut model still computes
the same function on its kept channels and rebuilds from its layer widths alone (architecture spec).

Counts (ratio r, fraction of each stage's channels removed): stage 1 removes round(C_1 r) chains. Stage
s > 1 already loses the images of stage s-1's removed chains; it removes round(C_s r) in all (at least
those), the rest among the channels the shortcut pads (below and above the band that carries stage s-1),
split so the padding stays centred ((kept below) = (kept padding) // 2). Which chains go is the
method's choice (`select`): the lowest importance summed over the chain's coupled tensors (li_filters:
L1 norms of every filter writing the channel; fm_norm: feature-map norms; random_channels: random),
or ThiNet's greedy on the stacked reconstruction rows (thinet.py).

`scope` option of the structured methods: `block` (block-internal conv1 cut, default), `stage` (this
cut), `all` (block-internal, then stage). `stage`/`all` on another architecture -> ValueError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn

from ..models.resnet_cifar import BasicBlock, CifarResNet, PadShortcut
from .channels import (
    block_cuts,
    filter_l1,
    layer_widths,
    lowest,
    n_remove,
    parameter_count,
    params_after_cuts,
    uniform_removal,
)

SCOPES = ("block", "stage", "all")
SCOPE_OPTIONS: dict[str, Any] = {"scope": "block"}
SCOPE_CHOICES: dict[str, tuple[str, ...]] = {"scope": SCOPES}

Chain = list[tuple[int, int]]  # (stage index, channel) from the head stage to the last stage


@dataclass
class Stage:
    """One stage of an option-A CIFAR ResNet and every layer its block outputs touch."""

    name: str  # "layer1", ...
    blocks: list[nn.Module]
    producers: list[tuple[str, nn.Conv2d, str, nn.BatchNorm2d]]  # (conv name, conv, bn name, bn)
    consumers: list[tuple[str, nn.Module]]  # Conv2d (input channels) or the final Linear
    pad_in: PadShortcut | None = None  # the shortcut of this stage's first block (reads the previous stage)
    pad_out: PadShortcut | None = None  # the shortcut of the next stage's first block (reads this stage)
    tensors: list[tuple[str, nn.Module, str]] = field(default_factory=list)  # (name, module, "in"/"out")

    @property
    def width(self) -> int:
        return self.producers[0][3].num_features


def _is_option_a(model: nn.Module) -> bool:
    if not isinstance(model, CifarResNet):
        return False
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    return bool(blocks) and all(isinstance(b.shortcut, (nn.Identity, PadShortcut)) for b in blocks)


def check_scope(model: nn.Module, scope: str, method: str) -> bool:
    """True when `scope` needs the stage cut; ValueError (one line) when the model has no option-A stages."""
    if scope not in SCOPES:
        raise ValueError(f"{method}: scope={scope!r} must be one of {', '.join(SCOPES)}")
    if scope == "block":
        return False
    if not _is_option_a(model):
        raise ValueError(
            f"{method}: scope={scope} needs an option-A CIFAR ResNet (resnet20/32/56/110); "
            f"{type(model).__name__} has no such stages: use scope=block"
        )
    return True


def cifar_stages(model: nn.Module) -> list[Stage]:
    """The stages of an option-A CIFAR ResNet, in forward order (ValueError for anything else)."""
    if not _is_option_a(model):
        raise ValueError(f"{type(model).__name__} is not an option-A CIFAR ResNet")
    names = [n for n, m in model.named_children() if isinstance(m, nn.Sequential) and n.startswith("layer")]
    seqs = [getattr(model, n) for n in names]
    stages = []
    for i, (name, seq) in enumerate(zip(names, seqs, strict=True)):
        blocks = list(seq)
        producers = [(f"{name}.{j}.conv2", b.conv2, f"{name}.{j}.bn2", b.bn2) for j, b in enumerate(blocks)]
        consumers: list[tuple[str, nn.Module]] = [(f"{name}.{j}.conv1", b.conv1) for j, b in enumerate(blocks)]
        tensors = [(f"{name}.{j}", b, "out") for j, b in enumerate(blocks)]
        if i == 0:
            producers.insert(0, ("conv1", model.conv1, "bn1", model.bn1))
            tensors.insert(0, (f"{name}.0 (input)", blocks[0], "in"))
        else:
            consumers = consumers[1:]  # the first block reads the previous stage
        if i + 1 < len(seqs):
            consumers.append((f"{names[i + 1]}.0.conv1", seqs[i + 1][0].conv1))
        else:
            consumers.append(("fc", model.fc))
        pad_in = blocks[0].shortcut if isinstance(blocks[0].shortcut, PadShortcut) else None
        stages.append(Stage(name, blocks, producers, consumers, pad_in=pad_in, tensors=tensors))
    for prev, nxt in pairwise(stages):
        prev.pad_out = nxt.pad_in
    for s in stages:
        widths = {bn.num_features for *_, bn in s.producers} | {conv.out_channels for _, conv, _, _ in s.producers}
        if len(widths) != 1:
            raise ValueError(f"{s.name}: block outputs disagree on their width ({sorted(widths)})")
    for prev, nxt in pairwise(stages):
        if nxt.pad_in is None and nxt.width != prev.width:
            raise ValueError(f"{nxt.name}: identity shortcut between widths {prev.width} and {nxt.width}")
        if nxt.width < prev.width:
            raise ValueError(f"{nxt.name}: narrower ({nxt.width}) than {prev.name} ({prev.width})")
    return stages


def band_offsets(stages: list[Stage]) -> list[int]:
    """L_s: stage s-1 channel q is added onto stage s channel q + L_s (0 for the first stage)."""
    return [0] + [(nxt.width - prev.width) // 2 for prev, nxt in pairwise(stages)]


def chain(stages: list[Stage], offsets: list[int], s: int, q: int) -> Chain:
    out = [(s, q)]
    for t in range(s + 1, len(stages)):
        q += offsets[t]
        out.append((t, q))
    return out


@dataclass
class ChainGroup:
    """Chains headed in stage `stage` on one side of the band (`all`, `below`, `above`); `k` of them go."""

    stage: int
    side: str
    chains: list[Chain]
    k: int


def stage_counts(widths: list[int], ratio: float) -> list[tuple[int, int, int]]:
    """Per stage: (channels removed in all, of which padded ones below the band, above the band). The
    first stage has no band: (k, 0, 0). Pure arithmetic on the widths (no model needed)."""
    out: list[tuple[int, int, int]] = []
    for s, c in enumerate(widths):
        if s == 0:
            out.append((n_remove(c, ratio), 0, 0))
            continue
        band_removed = out[-1][0]
        padded = c - widths[s - 1]
        below = padded // 2
        extra = min(max(n_remove(c, ratio) - band_removed, 0), padded)
        left = padded - extra
        b, a = below - left // 2, (padded - below) - (left - left // 2)
        out.append((band_removed + b + a, b, a))
    return out


def chain_groups(stages: list[Stage], ratio: float) -> list[ChainGroup]:
    """The selection problems of a stage cut at `ratio`, in forward order (see module docstring)."""
    widths = [s.width for s in stages]
    offsets = band_offsets(stages)
    groups = []
    for s, (k, k_below, k_above) in enumerate(stage_counts(widths, ratio)):
        if s == 0:
            groups.append(ChainGroup(0, "all", [chain(stages, offsets, 0, q) for q in range(widths[0])], k))
            continue
        lo, hi = offsets[s], offsets[s] + widths[s - 1]
        below = [chain(stages, offsets, s, q) for q in range(lo)]
        above = [chain(stages, offsets, s, q) for q in range(hi, widths[s])]
        groups += [ChainGroup(s, "below", below, k_below), ChainGroup(s, "above", above, k_above)]
    return groups


Selector = Callable[[ChainGroup], list[int]]  # -> positions (in group.chains) of the chains to remove


def lowest_chains(node_scores: list[Tensor]) -> Selector:
    """Select the k chains with the lowest importance summed over their channels (node_scores[s][q])."""

    def select(group: ChainGroup) -> list[int]:
        if not group.chains or group.k == 0:
            return []
        scores = torch.tensor([sum(float(node_scores[t][q]) for t, q in c) for c in group.chains])
        return lowest(scores.double(), group.k)

    return select


def plan_stage_cut(stages: list[Stage], ratio: float, select: Selector) -> list[list[int]]:
    """Removed channel indices per stage (sorted), whole chains at a time."""
    removed: list[set[int]] = [set() for _ in stages]
    for group in chain_groups(stages, ratio):
        picked = select(group) if group.k else []
        if len(set(picked)) != group.k:
            raise RuntimeError(f"stage cut: selector picked {len(set(picked))} chains, {group.k} wanted")
        for i in picked:
            for t, q in group.chains[i]:
                removed[t].add(q)
    return [sorted(r) for r in removed]


def stage_filter_l1(stage: Stage) -> Tensor:
    """Summed L1 norms of the coupled output filters (stem conv / conv2 of every block) per channel."""
    return torch.stack([filter_l1(conv) for _, conv, _, _ in stage.producers]).sum(0)


def _per_channel_params(stage: Stage) -> int:
    """Parameters one channel of the stage carries: its producer filters (+bias) and BN pairs, its
    consumers' input slices (conv kernels, Linear column)."""
    total = 0
    for _, conv, _, bn in stage.producers:
        total += conv.weight[0].numel() + (1 if conv.bias is not None else 0) + (2 if bn.affine else 0)
    for _, m in stage.consumers:
        total += m.weight[:, 0].numel()
    return total


def _expected_widths(before: dict, stage: Stage, k: int) -> dict:
    after = dict(before)
    for conv_name, _, bn_name, _ in stage.producers:
        c_in, c_out = after[conv_name]
        after[conv_name] = (c_in, c_out - k)
        after[bn_name] = (after[bn_name][0] - k,)
    for name, _ in stage.consumers:
        c_in, c_out = after[name]
        after[name] = (c_in - k, c_out)
    return after


def check_padding_law(widths: list[int], removed: list[list[int]]) -> None:
    """The cut keeps the function iff, at every zero-pad shortcut, the kept channels of stage s land on
    the kept images of their old positions: kept_{s+1} = (kept below) + [q + L for q in kept_s] + (kept
    above) with exactly (new padding) // 2 kept below. RuntimeError otherwise."""
    kept = [[q for q in range(c) if q not in set(r)] for c, r in zip(widths, removed, strict=True)]
    for s in range(1, len(widths)):
        off, band = (widths[s] - widths[s - 1]) // 2, widths[s - 1]
        below = [p for p in kept[s] if p < off]
        above = [p for p in kept[s] if p >= off + band]
        image = [q + off for q in kept[s - 1]]
        if kept[s] != below + image + above or len(below) != (len(kept[s]) - len(kept[s - 1])) // 2:
            raise RuntimeError(f"mis-prune: stage {s + 1} cut breaks the zero-pad shortcut's channel placement")


def _take(t: Tensor, dim: int, idx: list[int]) -> Tensor:
    return t.detach().index_select(dim, torch.tensor(idx, dtype=torch.long, device=t.device)).clone()


def _slice_out(conv: nn.Conv2d, bn: nn.BatchNorm2d, keep: list[int]) -> None:
    conv.weight = nn.Parameter(_take(conv.weight, 0, keep), requires_grad=conv.weight.requires_grad)
    if conv.bias is not None:
        conv.bias = nn.Parameter(_take(conv.bias, 0, keep), requires_grad=conv.bias.requires_grad)
    conv.out_channels = len(keep)
    for attr in ("weight", "bias"):
        p = getattr(bn, attr)
        if p is not None:
            setattr(bn, attr, nn.Parameter(_take(p, 0, keep), requires_grad=p.requires_grad))
    for attr in ("running_mean", "running_var"):
        if getattr(bn, attr) is not None:
            setattr(bn, attr, _take(getattr(bn, attr), 0, keep))
    bn.num_features = len(keep)


def _slice_in(module: nn.Module, keep: list[int]) -> None:
    module.weight = nn.Parameter(_take(module.weight, 1, keep), requires_grad=module.weight.requires_grad)
    if isinstance(module, nn.Conv2d):
        module.in_channels = len(keep)
    else:
        module.in_features = len(keep)


@torch.no_grad()
def _check_forward(model: nn.Module, example_input: Tensor, out_shape: tuple[int, ...]) -> None:
    was_training = model.training
    model.eval()
    try:
        for batch in (example_input, example_input.repeat(2, 1, 1, 1)):
            shape = tuple(model(batch).shape)
            if shape != (batch.shape[0], *out_shape[1:]):
                want = (batch.shape[0], *out_shape[1:])
                raise RuntimeError(f"mis-prune: pruned model outputs {shape}, expected {want}")
    finally:
        model.train(was_training)


def cut_stages(model: nn.Module, removed: list[list[int]], example_input: Tensor) -> list[list[int]]:
    """Remove `removed[s]` channels of every stage; returns the kept indices per stage. Checks the padding
    law first, then that only the stage widths changed, the exact parameter drop and the forward shape."""
    stages = cifar_stages(model)
    if len(removed) != len(stages):
        raise ValueError(f"stage cut: {len(removed)} index lists for {len(stages)} stages")
    widths = [s.width for s in stages]
    for stage, idxs in zip(stages, removed, strict=True):
        if len(set(idxs)) >= stage.width or any(not 0 <= q < stage.width for q in idxs):
            raise ValueError(f"{stage.name}: cannot remove {len(set(idxs))} of {stage.width} channels")
    removed = [sorted(set(int(q) for q in r)) for r in removed]
    check_padding_law(widths, removed)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out_shape = tuple(model(example_input).shape)
    model.train(was_training)
    before, params = layer_widths(model), parameter_count(model)
    expected_widths, expected_drop = before, 0
    for stage, idxs in zip(stages, removed, strict=True):
        expected_widths = _expected_widths(expected_widths, stage, len(idxs))
        expected_drop += len(idxs) * _per_channel_params(stage)
    kept = [[q for q in range(c) if q not in set(r)] for c, r in zip(widths, removed, strict=True)]
    for stage, keep, idxs in zip(stages, kept, removed, strict=True):
        if not idxs:
            continue
        for _, conv, _, bn in stage.producers:
            _slice_out(conv, bn, keep)
        for _, consumer in stage.consumers:
            _slice_in(consumer, keep)
        if stage.pad_out is not None:
            stage.pad_out.in_planes = len(keep)
        if stage.pad_in is not None:
            stage.pad_in.planes = len(keep)
    after, dropped = layer_widths(model), params - parameter_count(model)
    if after != expected_widths or dropped != expected_drop:
        changed = {n: (before.get(n), after.get(n)) for n in after if before.get(n) != after.get(n)}
        raise RuntimeError(
            f"mis-prune of the stage widths: removed {dropped} params, expected {expected_drop}; "
            f"changed layers: {changed}"
        )
    _check_forward(model, example_input, out_shape)
    return kept


def stage_details(names: list[str], widths: list[int], kept: list[list[int]]) -> dict[str, Any]:
    return {
        name: {"channels_before": c, "channels_after": len(k), "ratio": 1.0 - len(k) / c, "kept_channels": k}
        for name, c, k in zip(names, widths, kept, strict=True)
    }


def prune_stages(model: nn.Module, ratio: float, example_input: Tensor, select: Selector) -> dict[str, Any]:
    """Plan with `select`, cut, check; returns per-stage details (widths, kept indices)."""
    stages = cifar_stages(model)
    names, widths = [s.name for s in stages], [s.width for s in stages]
    kept = cut_stages(model, plan_stage_cut(stages, ratio, select), example_input)
    return stage_details(names, widths, kept)


def prune_stages_l1(model: nn.Module, ratio: float, example_input: Tensor) -> dict[str, Any]:
    """`prune_stages` removing the chains with the lowest summed L1 norms of the filters writing them
    (`stage_filter_l1`; li_filters, hybrid)."""
    return prune_stages(model, ratio, example_input, lowest_chains([stage_filter_l1(s) for s in cifar_stages(model)]))


def scoped_param_count(model: nn.Module, ratio: float, scope: str, skip_last: int = 0) -> int:
    """Parameter count after a uniform cut at `ratio` in `scope`, from the layer widths alone (no copy)."""
    out_cut: dict[str, int] = {}
    in_cut: dict[str, int] = {}
    bn_cut: dict[str, int] = {}
    if scope in ("block", "all"):
        out_cut, in_cut, bn_cut = block_cuts(model, uniform_removal(model, ratio, skip_last), skip_last)
    if scope in ("stage", "all"):
        stages = cifar_stages(model)
        for stage, (k, _, _) in zip(stages, stage_counts([s.width for s in stages], ratio), strict=True):
            for conv_name, _, bn_name, _ in stage.producers:
                out_cut[conv_name] = out_cut.get(conv_name, 0) + k
                bn_cut[bn_name] = bn_cut.get(bn_name, 0) + k
            for name, _ in stage.consumers:
                in_cut[name] = in_cut.get(name, 0) + k
    return params_after_cuts(model, out_cut, in_cut, bn_cut)
