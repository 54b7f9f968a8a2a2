"""Benchmark the registered pruning methods at equal PARAMETER-reduction targets (library level, no MLflow).

    python benchmarks/prune_benchmark.py --checkpoint resnet20.pt --arch resnet20 --data-dir cifar10.tar.gz \
        --targets 0.5,0.7,0.9 --finetune-epochs 2 --device cuda --out results.json

For each method and target the method's `ratio` is chosen so the *whole model's* parameter count falls by
the target (Blalock et al. 2020 Sec. 6: compare at equal footprint):
- structured (ratio = channels removed per layer): bisection on the channel ratio against the parameter
  count of a dry-run cut (no data). On option-A ResNets only block-internal convs are pruned, so high
  targets can be unreachable: the row then says so.
- unstructured (ratio = fraction of prunable weights): ratio = target * params / prunable weights.
- hybrid (ratio is already a parameter reduction): ratio = target.
`--budget equal` (default) gives every method the same total fine-tuning epochs: the caller fine-tunes
`finetune_epochs - result.finetuned_epochs` (Han's rounds spend part of it themselves; GMP's `epochs`
defaults to the whole budget). `--budget extra`: every method gets `finetune_epochs` after its own.
Accuracies are on the test split, final (not best-seen) values. Prints a markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_tracker.core.models import build_model, count_params  # noqa: E402
from prune_tracker.core.pruning import (  # noqa: E402
    PruneContext,
    channel_ratio_for_param_reduction,
    get_method,
    known_methods,
    make_permanent,
    prunable_layers,
)


def load_data(dataset: str, data_dir: str | None, train_subset: int, val_size: int, seed: int):
    """Adapter to prune_tracker.core.data (the lead's loader): train/val/test splits of uint8 tensors."""
    from prune_tracker.core.data import load_splits

    return load_splits(dataset, data_dir, train_subset=train_subset, val_size=val_size, seed=seed)


def make_context(splits, args: argparse.Namespace, device: torch.device) -> tuple[PruneContext, Any]:
    """PruneContext on top of prune_tracker.core.data / prune_tracker.core.training; also returns test_accuracy."""
    from prune_tracker.core.data import BatchLoader, ImageSet
    from prune_tracker.core.training import TrainConfig, evaluate, finetune_fn

    calib = ImageSet(splits.train.images[: args.calib_images], splits.train.labels[: args.calib_images])
    calib_loader = BatchLoader(calib, 256, splits.mean, splits.std, device=device, channels_last=False)
    val = splits.val if len(splits.val) else splits.test
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=args.lr, schedule="cosine",
                         warmup_fraction=0.0, label_smoothing=0.0, tta_flip=False, seed=args.seed)
    example = next(iter(calib_loader))[0][:1]
    ctx = PruneContext(
        example_input=example,
        calibration_batches=lambda: iter(calib_loader),
        evaluate=lambda model: evaluate(model, val, splits, device)[0],
        finetune=finetune_fn(splits, config, device),
        device=device,
        log=lambda msg: print(f"  {msg}", file=sys.stderr),
    )
    return ctx, lambda model: evaluate(model, splits.test, splits, device)[0]


def remaining_params(model: nn.Module) -> int:
    """Parameters left: dense count minus masked-out weights (masks still attached)."""
    masked = sum(int((m.weight_mask == 0).sum()) for m in model.modules() if hasattr(m, "weight_mask"))
    return count_params(model) - masked


def ratio_for_target(name: str, model: nn.Module, target: float, ctx: PruneContext,
                     options: dict[str, Any]) -> tuple[float | None, str]:
    """The method's ratio reaching `target` parameter reduction, or (None, reason)."""
    method = get_method(name)
    opts = method.resolve_options(options)
    total = count_params(model)
    if method.ratio_kind == "params":
        return target, ""
    if method.ratio_kind == "channels":
        ratio, reached = channel_ratio_for_param_reduction(model, target, opts.get("skip_last", 0))
        if reached < target - 1e-4:
            return None, f"unreachable: at most {reached:.3f} with this scope"
        return ratio, ""
    prunable = sum(m.weight.numel() for _, m in prunable_layers(model, opts["keep_first"], opts["keep_last"]))
    ratio = target * total / prunable
    return (ratio, "") if ratio < 1 else (None, f"unreachable: prunable weights are {prunable / total:.3f}")


def run_one(name: str, model: nn.Module, target: float, ctx: PruneContext, test_accuracy, args,
            options: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"method": name, "target": target}
    if args.budget == "equal" and "epochs" in get_method(name).params and "epochs" not in options:
        options = {**options, "epochs": args.finetune_epochs}  # GMP prunes during the whole budget
    ratio, note = ratio_for_target(name, model, target, ctx, options)
    if ratio is None:
        return {**row, "note": note}
    result = get_method(name).prune(model, ratio, ctx, **options)
    left = remaining_params(result.model)
    acc_pruned = test_accuracy(result.model)
    extra = args.finetune_epochs - result.finetuned_epochs if args.budget == "equal" else args.finetune_epochs
    start = time.perf_counter()
    ctx.finetune(result.model, max(0.0, extra))
    make_permanent(result.model)
    return {**row, "ratio": ratio, "param_reduction": 1 - left / count_params(model),
            "params": left, "acc_pruned": acc_pruned, "acc_finetuned": test_accuracy(result.model),
            "prune_seconds": result.seconds, "method_finetune_epochs": result.finetuned_epochs,
            "finetune_epochs": max(0.0, extra), "finetune_seconds": time.perf_counter() - start,
            "structured": result.structured, "budget": args.finetune_epochs, "budget_mode": args.budget,
            "details": {k: v for k, v in result.details.items()
                        if k in ("sparsity", "layers", "reconstruction", "sensitivity")}}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | target | params reduction | test acc pruned | test acc fine-tuned | prune s "
             "| note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "param_reduction" not in r:
            lines.append(f"| {r['method']} | {r['target']:.2f} | - | - | - | - | {r.get('note', '')} |")
            continue
        note = f"own ft {r['method_finetune_epochs']:g} ep" if r["method_finetune_epochs"] else ""
        if r["method_finetune_epochs"] > r["budget"] and r["budget_mode"] == "equal":
            note += " (over the equal budget)"
        lines.append(f"| {r['method']} | {r['target']:.2f} | {r['param_reduction']:.3f} | "
                     f"{r['acc_pruned']:.4f} | {r['acc_finetuned']:.4f} | {r['prune_seconds']:.1f} "
                     f"| {note} |")
    return "\n".join(lines)


def parse_options(items: list[str]) -> dict[str, dict[str, str]]:
    """`--option thinet.samples=2000` -> {"thinet": {"samples": "2000"}} (validated by the method)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, option = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--option {item!r}: expected METHOD.OPTION=VALUE")
        out.setdefault(method, {})[option] = value
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="state_dict .pt of --arch (omit only for a smoke test)")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | synthetic")
    p.add_argument("--data-dir", default=None, help="torchvision root, ImageFolder tree or .tar.gz")
    p.add_argument("--methods", default="all", help=f"comma list or 'all' ({', '.join(known_methods())})")
    p.add_argument("--targets", default="0.5,0.7,0.9", help="parameter-reduction targets")
    p.add_argument("--finetune-epochs", type=float, default=2.0)
    p.add_argument("--budget", choices=("equal", "extra"), default="equal")
    p.add_argument("--option", action="append", default=[], help="METHOD.OPTION=VALUE, repeatable")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning LR (cosine to 0)")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--train-subset", type=int, default=0)
    p.add_argument("--calib-images", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="prune_benchmark.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
                          else args.device)
    methods = known_methods() if args.methods == "all" else args.methods.split(",")
    for name in methods:
        get_method(name)  # unknown names fail before any work
    options = parse_options(args.option)
    targets = [float(t) for t in args.targets.split(",")]
    splits = load_data(args.dataset, args.data_dir, args.train_subset, args.val_size, args.seed)
    model = build_model(args.arch, splits.num_classes)
    if args.checkpoint:
        blob = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(blob.get("state_dict", blob))
    else:
        print("WARNING: no --checkpoint, pruning random weights (smoke test only)", file=sys.stderr)
    model = model.to(device).eval()
    ctx, test_accuracy = make_context(splits, args, device)
    base = {"arch": args.arch, "params": count_params(model), "test_acc": test_accuracy(model)}
    print(f"baseline {args.arch}: {base['params']} params, test acc {base['test_acc']:.4f}", file=sys.stderr)
    rows = []
    for name in methods:
        for target in targets:
            print(f"{name} @ {target}", file=sys.stderr)
            rows.append(run_one(name, model, target, ctx, test_accuracy, args, options.get(name, {})))
    print(markdown(rows))
    payload = {"baseline": base, "args": vars(args), "rows": rows}
    Path(args.out).write_text(json.dumps(payload, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


if __name__ == "__main__":
    main()
