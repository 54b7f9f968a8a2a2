"""Iterative pruning for every method: R rounds of prune -> fine-tune (Han et al. 2015 Sec. 3.4: iterating beats
one shot because the network re-settles before the next cut; Renda et al. 2020 and LAMP's code prune a fixed
fraction of the remainder per round too).

Round k of R brings the model to cumulative sparsity s_k = 1 - (1 - r)^(k/R) of the ORIGINAL model (the same
fraction of what is left each round, ending exactly at r), then fine-tunes it for `round_epochs`. How s_k becomes
the `ratio` given to the method depends on what its ratio removes (`PruningMethod.ratio_kind`):
- weights (unstructured masks): the ratio is a fraction of the whole model's prunable weights, so it is s_k
  itself. Masks are kept between rounds: earlier zeros are AND-ed back into the round's result (also before
  the method's own fine-tuning, e.g. `gmp`), so they stay zero whatever the fine-tuning did. Magnitude-type
  criteria pick earlier zeros first (|0| is the smallest score) and land exactly on s_k; for any other
  criterion the excess is returned: its new cuts with the largest earlier |w| are revived (`_keep_masks`).
- channels (`li_filters`, `random_channels`, `thinet`): the ratio is the fraction of each layer's CURRENT
  filters to remove, so the uniform ratio of the already thinner model is chosen whose per-layer cuts leave the
  channel counts a one-shot prune at s_k leaves (n_remove rounding included; `channel_round_ratio`). A
  per-layer allocation (`li_filters per_layer=sensitivity`) is re-run each round on the thinner model.
- params (`hybrid`): the ratio is the non-zero parameter reduction of the current model, so it is
  1 - (1 - s_k) * P_original / P_current; earlier zeros are kept as for weights where a layer keeps its shape.
A method that already works in rounds (`han`: `prunes_in_rounds`) makes one cut per round here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .base import PruneContext, PruneResult, PruningMethod, validate_ratio
from .channels import channel_scope, n_remove
from .graph import graph_channels, uses_graph_scope
from .layers import channels_per_layer, prunable_layers
from .masks import count_nonzero_params, current_weight, global_sparsity, is_masked, set_mask, sparsity_report

RoundCallback = Callable[[int, dict[str, float]], None]


def round_targets(ratio: float, rounds: int) -> list[float]:
    """Cumulative sparsity after each round: 1 - (1 - ratio)^(k / rounds), k = 1..rounds (the last is `ratio`
    itself, not a float rounding of it)."""
    return [1.0 - (1.0 - ratio) ** (k / rounds) for k in range(1, rounds)] + [ratio]


@dataclass(frozen=True)
class RoundPlan:
    """`rounds` of prune -> `round_epochs` of `ctx.finetune` (not after the last round unless `finetune_last`: a
    caller's own fine-tuning takes its place), `on_round(k, records)` after each round."""

    rounds: int
    round_epochs: float
    on_round: RoundCallback | None = None
    finetune_last: bool = True


def run_rounds(model: nn.Module, targets: list[float], cut: Callable[[nn.Module, int, float], nn.Module],
               ctx: PruneContext, measure: Callable[[nn.Module], float], plan: RoundPlan, label: str = "iterative",
               ) -> tuple[nn.Module, list[dict[str, float]], float]:
    """The loop every iterative method shares: for round k, `model = cut(model, k, targets[k-1])`, then
    `ctx.finetune(model, plan.round_epochs)` (see RoundPlan), then `plan.on_round(k, {"round_sparsity":
    measure(model), "round_val_accuracy": ctx.evaluate(model)})` (evaluated only when there is an `on_round`).
    Returns the final model, the per-round records and the epochs of fine-tuning spent."""
    round_epochs, on_round, finetune_last = plan.round_epochs, plan.on_round, plan.finetune_last
    history: list[dict[str, float]] = []
    spent = 0.0
    for k, target in enumerate(targets, start=1):
        model = cut(model, k, target)
        record = {"round_sparsity": measure(model)}
        ctx.log(f"{label}: round {k}/{len(targets)} target {target:.4f}, reached {record['round_sparsity']:.4f}")
        if round_epochs > 0 and (k < len(targets) or finetune_last):
            ctx.finetune(model, round_epochs)
            spent += round_epochs
        if on_round is not None:
            record["round_val_accuracy"] = ctx.evaluate(model)
            on_round(k, dict(record))
        history.append(record)
    return model, history, spent


def one_step_ratio(current: dict[str, int], wanted: dict[str, int]) -> float | None:
    """A uniform channel ratio r with current[l] - n_remove(current[l], r) == wanted[l] for every layer l (the
    middle of the interval where all hold), or None when no r does (round(C * r) steps at (t + 0.5) / C)."""
    low, high = 0.0, 1.0
    for name, want in wanted.items():
        c, d = current[name], current[name] - want
        if d < 0 or want < 1:
            return None
        low = max(low, (d - 0.5) / c if d > 0 else 0.0)
        high = min(high, (d + 0.5) / c if d < c - 1 else 1.0)
    return (low + high) / 2 if high - low > 1e-9 else None


def channel_round_ratio(
    current: dict[str, int], wanted: dict[str, int], final: dict[str, int], natural: float = 0.0
) -> float:
    """The uniform channel ratio of an intermediate round: the one whose cuts come closest to `wanted` (channels
    off, summed over layers, then in total; `natural` preferred among equals) among those after which one
    more uniform cut still reaches `final` exactly (`one_step_ratio`). Ratio 0 always qualifies when `current`
    can reach `final`, so the last round is exact; if it cannot (e.g. a method that allocates its own per-layer
    ratios), the closest ratio is returned. Candidates: one ratio inside each interval on which every layer's
    count is constant."""
    steps = sorted({(t + 0.5) / c for c in current.values() for t in range(c)})
    candidates = [natural, 0.0, *((a + b) / 2 for a, b in zip(steps, steps[1:], strict=False)), (steps[-1] + 1) / 2]

    def after(r: float) -> dict[str, int]:
        return {n: c - n_remove(c, r) for n, c in current.items()}

    def miss(r: float) -> tuple[int, int]:
        left = after(r)
        off = [left[n] - wanted[n] for n in wanted]
        return sum(abs(o) for o in off), abs(sum(off))

    valid = [r for r in candidates if 0 <= r < 1]
    reachable = [r for r in valid if one_step_ratio(after(r), final) is not None]
    return min(reachable or valid, key=miss)  # min keeps the first of equals


def _masks(model: nn.Module) -> dict[str, Tensor]:
    """Keep-masks (bool) of the masked Conv2d/Linear layers of `model`."""
    return {
        name: m.weight_mask.detach().bool().clone()
        for name, m in prunable_layers(model, keep_first=False, keep_last=False)
        if is_masked(m)
    }


@torch.no_grad()
def _refresh_masked_weights(model: nn.Module) -> None:
    """Recompute `weight = weight_orig * weight_mask` as a plain tensor: after a training forward pass it is a
    graph node, which `copy.deepcopy` (inside `method.prune`) refuses."""
    for module in model.modules():
        if is_masked(module):
            module.weight = module.weight_orig * module.weight_mask


def _same_shape(model: nn.Module, masks: dict[str, Tensor]) -> dict[str, tuple[nn.Module, Tensor]]:
    modules = dict(model.named_modules())
    return {n: (modules[n], k) for n, k in masks.items() if n in modules and modules[n].weight.shape == k.shape}


def _reapply(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """AND earlier keep-masks into `model` (layers whose shape changed are left alone)."""
    for module, keep in _same_shape(model, masks).values():
        set_mask(module, keep)


@torch.no_grad()
def _keep_masks(pruned: nn.Module, before: nn.Module, masks: dict[str, Tensor], log: Callable[[str], None]) -> int:
    """Keep the earlier zeros (`masks`, taken from `before`) in `pruned` without changing how many weights the
    method pruned: for each earlier zero the method left alive, one of its new cuts (largest |w| in `before`
    first) is revived with its value from `before`. Returns the number revived (0 for magnitude criteria)."""
    layers = _same_shape(pruned, masks)
    old = dict(before.named_modules())
    excess, new_cuts = 0, []
    for name, (module, keep_before) in layers.items():
        keep_now = module.weight_mask.bool() if is_masked(module) else torch.ones_like(keep_before)
        excess += int((~keep_before & keep_now).sum())
        cut = keep_before & ~keep_now
        new_cuts.append((name, cut.nonzero(as_tuple=True), current_weight(old[name])[cut].abs()))
    revive = min(excess, sum(len(scores) for *_, scores in new_cuts))
    if revive > 0:
        scores = torch.cat([s.float().flatten() for *_, s in new_cuts])
        chosen = torch.zeros(len(scores), dtype=torch.bool)
        chosen[torch.topk(scores, revive).indices] = True
        start = 0
        for name, index, layer_scores in new_cuts:
            pick = chosen[start : start + len(layer_scores)]
            start += len(layer_scores)
            if pick.any():
                module, where = layers[name][0], tuple(i[pick] for i in index)
                module.weight_mask[where] = 1
                module.weight_orig[where] = current_weight(old[name])[where].to(module.weight_orig.dtype)
        log(f"iterative: the method kept {excess} earlier zeros alive; revived {revive} of its new cuts instead")
    for module, keep in layers.values():
        set_mask(module, keep)
    return revive


def param_reduction(model: nn.Module, original_params: int) -> float:
    """1 - (parameters left - masked entries) / `original_params`: what a `params` ratio removes (`hybrid`)."""
    masked = sum(int((m.weight_mask == 0).sum()) for m in model.modules() if is_masked(m))
    return 1 - (sum(p.numel() for p in model.parameters()) - masked) / original_params


class _Rounds:
    """Converts the cumulative target of round k into the `ratio` of the current model, and measures what the
    current model has reached, for one method's `ratio_kind`."""

    def __init__(self, method: PruningMethod, model: nn.Module, opts: dict[str, Any], ratio: float,
                 example_input: torch.Tensor | None = None):
        self.kind, self.opts, self.ratio_final = method.ratio_kind, opts, ratio
        self.example_input = example_input  # a model outside the zoo counts the channels of its graph groups
        self.params = sum(p.numel() for p in model.parameters())
        self.skip_last = opts.get("skip_last", 0)
        self.channels = self._channels(model) if self.kind == "channels" or method.changes_architecture else {}
        self.scope = set(self.channels)  # layers the method prunes, narrowed by its first result
        self.previous = 0.0

    def _channels(self, model: nn.Module) -> dict[str, int]:
        if uses_graph_scope(model) and self.example_input is not None:
            return graph_channels(model, self.example_input, self.skip_last)
        return {layer.name: layer.conv.out_channels for layer in channel_scope(model, self.skip_last)}

    def ratio(self, model: nn.Module, target: float) -> float:
        natural = 1 - (1 - target) / (1 - self.previous)  # the same fraction of what is left
        self.previous = target
        if self.kind == "params":
            return max(1 - (1 - target) * self.params / sum(p.numel() for p in model.parameters()), 0.0)
        if self.kind == "channels":
            current = {n: c for n, c in self._channels(model).items() if n in self.scope}
            wanted, final = ({n: c - n_remove(c, t) for n, c in self.channels.items() if n in self.scope}
                             for t in (target, self.ratio_final))
            exact = one_step_ratio(current, final) if target == self.ratio_final else None
            return exact if exact is not None else channel_round_ratio(current, wanted, final, natural)
        return target

    def narrow(self, result: PruneResult) -> None:
        if self.kind == "channels" and result.details.get("layers"):
            self.scope &= set(result.details["layers"])

    def measure(self, model: nn.Module) -> float:
        if self.kind == "channels":
            return 1 - sum(self._channels(model).values()) / sum(self.channels.values())
        if self.kind == "params":
            return param_reduction(model, self.params)
        return global_sparsity(model, self.opts.get("keep_first", True), self.opts.get("keep_last", True))


def _compose_kept(kept: dict[str, list[int]], round_kept: dict[str, list[int]]) -> dict[str, list[int]]:
    """Kept filter indices of the original layers after one more round (its indices are of the thinner layer)."""
    return {**kept, **{n: [kept[n][i] for i in idx] if n in kept else list(idx) for n, idx in round_kept.items()}}


def iterative_prune(method: PruningMethod, model: nn.Module, ratio: float, ctx: PruneContext, plan: RoundPlan,
                    options: dict[str, Any] | None = None) -> PruneResult:
    """Prune `model` (never modified) to `ratio` in `plan.rounds` rounds of `method.prune` + `ctx.finetune(model,
    plan.round_epochs)` (see the module docstring). `on_round(k, {"round_sparsity", "round_val_accuracy"})` after each
    round's fine-tuning: the fraction reached so far (of weights, channels or parameters, as `method.ratio_kind`
    counts them, relative to the original model) and `ctx.evaluate`. `finetune_last=False` skips the last round's
    fine-tuning (the caller's fine-tune takes its place, as in `han`).

    The result is the last round's, with `details["ratio"]` = `ratio`, per-layer channel counts and kept indices
    relative to the original model, and `details["iterative"]` (per-round ratios given to the method and
    records); `finetuned_epochs` and `seconds` add up every round (`seconds` excludes fine-tuning)."""
    ratio = validate_ratio(ratio)
    rounds, round_epochs = plan.rounds, plan.round_epochs
    if not (isinstance(rounds, int | float) and rounds >= 1 and float(rounds).is_integer()) or not round_epochs >= 0:
        raise ValueError(f"iterative: rounds must be an integer >= 1 and round_epochs >= 0, "
                         f"got rounds={rounds!r}, round_epochs={round_epochs!r}")
    rounds = int(rounds)
    opts = method.resolve_options(options or {})
    if getattr(method, "prunes_in_rounds", False):
        opts.update(rounds=1, round_epochs=0.0)
    state = _Rounds(method, model, opts, ratio, ctx.example_input)
    original_channels = dict(state.channels)
    results: list[PruneResult] = []
    ratios: list[float] = []
    kept: dict[str, list[int]] = {n: list(range(c)) for n, c in original_channels.items()}
    touched: set[str] = set()  # layers some round reported kept channels for
    finetune_seconds = 0.0
    started = time.perf_counter()

    def timed_finetune(m: nn.Module, epochs: float, step_callback=None) -> None:
        nonlocal finetune_seconds
        t0 = time.perf_counter()
        try:
            ctx.finetune(m, epochs, step_callback=step_callback)
        finally:
            finetune_seconds += time.perf_counter() - t0

    loop_ctx = dataclasses.replace(ctx, finetune=timed_finetune)

    def cut(current: nn.Module, k: int, target: float) -> nn.Module:
        nonlocal kept
        round_ratio = state.ratio(current, target)
        masks = {} if method.structured else _masks(current)
        if k > 1:  # round 1 hands over the caller's model, which is never touched
            _refresh_masked_weights(current)

        def finetune_keeping_masks(m: nn.Module, epochs: float, step_callback=None) -> None:
            _reapply(m, masks)
            ctx.finetune(m, epochs, step_callback=step_callback)

        round_ctx = dataclasses.replace(ctx, finetune=finetune_keeping_masks) if masks else ctx
        result = method.prune(current, round_ratio, round_ctx, **opts)
        if masks:
            _keep_masks(result.model, current, masks, ctx.log)
        state.narrow(result)
        kept = _compose_kept(kept, result.details.get("kept_channels", {}))
        touched.update(result.details.get("kept_channels", {}))
        results.append(result)
        ratios.append(round_ratio)
        return result.model

    final, history, spent = run_rounds(model, round_targets(ratio, rounds), cut, loop_ctx, state.measure,
                                       dataclasses.replace(plan, rounds=rounds), label=f"iterative {method.name}")
    last = results[-1]
    details = dict(last.details)
    details["ratio"] = ratio
    if "layers" in details:
        after = {n: c for n, c in channels_per_layer(final).items() if n in details["layers"]}  # conv or Linear
        details["layers"] = {
            n: {"channels_before": original_channels.get(n, after[n]), "channels_after": after[n],
                "ratio": 1.0 - after[n] / original_channels.get(n, after[n])}
            for n in details["layers"]
        }
    if "kept_channels" in details:
        details["kept_channels"] = {n: kept[n] for n in kept if n in touched}
    if "sparsity" in details and method.ratio_kind == "weights":
        details["sparsity"] = state.measure(final)
    if method.ratio_kind == "params":
        details["param_reduction"] = state.measure(final)
        details["nonzero_param_reduction"] = 1 - count_nonzero_params(final) / state.params
    if "layer_sparsity" in details:
        report = sparsity_report(final)
        details["layer_sparsity"] = {n: report[n] for n in details["layer_sparsity"] if n in report}
    details["iterative"] = {
        "rounds": rounds,
        "round_epochs": round_epochs,
        "round_targets": round_targets(ratio, rounds),
        "round_ratios": ratios,
        "history": history,
    }
    details["wall_seconds"] = time.perf_counter() - started
    details["finetune_seconds"] = finetune_seconds + sum(r.details.get("finetune_seconds", 0.0) for r in results)
    return PruneResult(
        model=final,
        structured=last.structured,
        details=details,
        figures=last.figures,
        finetuned_epochs=spent + sum(r.finetuned_epochs for r in results),
        seconds=sum(r.seconds for r in results),
    )
