"""Is pruning worth it? ResNet-20 pruned vs a dense-small ResNet of the same bytes, at an equal total training budget,
over several seeds (Blalock et al. 2020; Liu et al. 2019). Every model is a real MLflow run of the job layer (the same
code as `mlflow run . -e train / prune`); prints a markdown table with mean ± std over seeds and the device.

Per seed: a dense base (`--epochs`, the base recipe); per factor k (`--factors 2,4,10`): the target is the base's
`--target-metric` bytes / k (default footprint_best_bytes: the best fp16 storage, so the dense base is 1x);
* pruned: `lamp` at `target_bytes` (the ratio searched with lamp itself, a ceiling), fine-tuned
  `--finetune-epochs` with learning-rate rewinding (the best recipe of the recovery-recipes benchmark);
* dense-small: the largest `--baseline-archs` model at a width multiplier whose dense bytes are at most the target
  (measured), trained from scratch with the base recipe for `--epochs + --finetune-epochs` epochs (equal total
  budget; lamp spends no epochs of its own).

    python benchmarks/study_benchmark.py --data-dir ../shared/data/cifar10-jpeg.tar.gz --epochs 30 \\
        --finetune-epochs 10 --seeds 0,1,2 --factors 2,4,10
    python benchmarks/study_benchmark.py --dataset synthetic --train-subset 400 --epochs 1 --finetune-epochs 0.5 \\
        --seeds 0,1 --factors 2,4   # a smoke run on a CPU

Afterwards `prune-tracker compare --experiment-names study-benchmark --aggregate seed` and `prune-tracker report
... --aggregate seed` show the same runs (the report's "Is pruning worth it?" section).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import where  # noqa: E402  (benchmarks/machine.py)

from prune_tracker import jobs, tracking  # noqa: E402
from prune_tracker.core.seeds import fmt_mean_std, mean_std, parse_seeds  # noqa: E402
from prune_tracker.core.training import TrainConfig, resolve_device  # noqa: E402
from prune_tracker.studies.baselines import dense_small_baseline, size_dense_small  # noqa: E402


def base_recipe(args: argparse.Namespace, seed: int) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule="onecycle",
                       resize_schedule=args.resize_schedule, seed=seed)


def run_options(args: argparse.Namespace) -> jobs.RunSpec:
    return jobs.RunSpec(args.experiment, args.device, progress=False,
                        precisions=tuple(p for p in args.precisions.split(",") if p))


def data_options(args: argparse.Namespace, inherited: bool = False) -> jobs.DataSpec:
    """The study's split (one split for every seed: the seeds vary training, pruning and fine-tuning)."""
    if inherited:  # derived runs take the base's split
        return jobs.DataSpec.inherited(args.data_dir)
    return jobs.DataSpec(args.dataset, args.data_dir, args.train_subset, args.val_size, 0)


def one_seed(args: argparse.Namespace, seed: int, factors: list[float]) -> list[dict[str, Any]]:
    """The base of one seed, then a pruned model and a dense-small baseline per factor."""
    started = time.perf_counter()
    base = jobs.train(jobs.TrainSpec(args.arch, data_options(args), base_recipe(args, seed), run_options(args)))
    base_metrics = tracking.run_metrics(base)
    print(f"seed {seed}: base {base} test {base_metrics['test_accuracy']:.4f} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    num_classes = int(float(tracking.run_params(base)["num_classes"]))
    rows = []
    for factor in factors:
        target = base_metrics[args.target_metric] / factor
        started = time.perf_counter()
        finetune = replace(base_recipe(args, seed), epochs=args.finetune_epochs, lr=0.01, schedule="cosine")
        pruned = jobs.prune_model(jobs.PruneSpec(
            f"runs:/{base}/model", "lamp", finetune_epochs=args.finetune_epochs, target_bytes=int(target),
            target_metric=args.target_metric, data=data_options(args, inherited=True), train=finetune,
            recovery=jobs.Recovery(finetune_schedule="rewind"), run=run_options(args)))
        pruned_seconds = time.perf_counter() - started
        sized = size_dense_small(target, args.target_metric, args.baseline_archs.split(","), num_classes)
        started = time.perf_counter()
        dense, _ = dense_small_baseline(sized, args.epochs + args.finetune_epochs, data_options(args),
                                        base_recipe(args, seed), run_options(args), base_run_id=base)
        p, d = tracking.run_metrics(pruned), tracking.run_metrics(dense)
        rows.append({"seed": seed, "factor": factor, "target": target, "pruned_run": pruned, "dense_run": dense,
                     "pruned_bytes": p[args.target_metric], "ratio": p.get("searched_ratio"),
                     "pruned_acc": p["test_accuracy"], "dense_arch": sized.arch, "width": sized.width,
                     "dense_bytes": d[args.target_metric], "dense_acc": d["test_accuracy"],
                     "pruned_seconds": pruned_seconds, "dense_seconds": time.perf_counter() - started})
        print(f"  {factor:g}x: pruned {p['test_accuracy']:.4f} at {p[args.target_metric]:.0f} B (ratio "
              f"{p.get('ratio', float('nan')):.3f}); dense-small {sized.arch} w{sized.width:g} {d['test_accuracy']:.4f}"
              f" at {d[args.target_metric]:.0f} B", flush=True)
    return rows


def table(rows: list[dict[str, Any]], args: argparse.Namespace, device: str) -> str:
    budget = args.epochs + args.finetune_epochs
    lines = [f"| × smaller ({args.target_metric}) | target bytes | pruned (lamp + rewind) bytes | lamp ratio | "
             f"pruned test acc | dense-small | its bytes | dense-small test acc | Δ (pt) | epochs each | n | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for factor in sorted({r["factor"] for r in rows}):
        group = [r for r in rows if r["factor"] == factor]
        pruned, pruned_std = mean_std([r["pruned_acc"] for r in group])
        dense, dense_std = mean_std([r["dense_acc"] for r in group])
        shapes = sorted({f"{r['dense_arch']} w{r['width']:g}" for r in group})
        lines.append(
            f"| {factor:g}× | {group[0]['target']:,.0f} | {statistics.fmean(r['pruned_bytes'] for r in group):,.0f} | "
            f"{statistics.fmean(r['ratio'] for r in group):.3f} | {fmt_mean_std(pruned, pruned_std, len(group))} | "
            f"{', '.join(shapes)} | {statistics.fmean(r['dense_bytes'] for r in group):,.0f} | "
            f"{fmt_mean_std(dense, dense_std, len(group))} | {100 * (pruned - dense):+.2f} | {budget:g} | "
            f"{len(group)} | {device} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 copy (torchvision root, ImageFolder, .tar.gz)")
    parser.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | synthetic")
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--baseline-archs", default="resnet20", help="dense-small candidates, e.g. resnet20,resnet8")
    parser.add_argument("--epochs", type=float, default=30.0, help="base epochs")
    parser.add_argument("--finetune-epochs", type=float, default=10.0, help="pruned model's fine-tuning epochs")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--factors", default="2,4,10", help="targets: the base's bytes / factor")
    parser.add_argument("--target-metric", default="footprint_best_bytes")
    parser.add_argument("--train-subset", type=int, default=0, help="class-balanced training subset (0 = all)")
    parser.add_argument("--val-size", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.2, help="base peak lr (one-cycle)")
    parser.add_argument("--resize-schedule", default="", help="progressive resizing of the base recipe")
    parser.add_argument("--precisions", default="", help="deployment precisions measured on every model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--experiment", default="study-benchmark")
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    factors = [float(f) for f in args.factors.split(",") if f]
    args.val_size = args.val_size if args.val_size == "auto" else int(args.val_size)
    device = where(resolve_device(args.device))
    print(f"study: {args.arch} on {args.dataset}, seeds {seeds}, factors {factors}, {args.epochs:g} + "
          f"{args.finetune_epochs:g} epochs; device: {device}; torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    rows = [row for seed in seeds for row in one_seed(args, seed, factors)]
    print(f"\nstudy on {device}: {time.perf_counter() - started:.0f} s\n")
    print(table(rows, args, device))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "device": device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
