"""Any CNN study (library level, no MLflow): torchvision MobileNetV3-small and ResNet-18, trained briefly on the
dataset's own 32x32 images, pruned at 50% / 70% with each method, then given one fine-tuning budget.

    python benchmarks/any_cnn_benchmark.py --data-dir /work/shared/data/cifar10-jpeg.tar.gz \
        --epochs 15 --finetune-epochs 3 --out any_cnn.json            # the study (GPU: add --device cuda)
    python benchmarks/any_cnn_benchmark.py --data-dir DATA --train-subset 2000 --epochs 1 \
        --finetune-epochs 0.2 --val-size 500                          # a reduced CPU run
    python benchmarks/any_cnn_benchmark.py --dataset synthetic --train-subset 500 --epochs 0.5 \
        --finetune-epochs 0.1                                         # smoke test, no data needed

`ratio` is what each method removes: a fraction of the prunable weights (global_l1, lamp: unstructured) or of the
channels of every coupled group of the dependency graph (li_filters: structured, so its parameter reduction is
larger, about 1 - (1 - r)^2). Every pruned model gets the same fine-tuning budget (`--finetune-epochs`, cosine
from `--finetune-lr`). Accuracies are on the test split with flip TTA, final values. Bytes are the footprint's
`footprint_best_bytes` (per tensor the smallest of dense / CSR / bitmask fp16) and `footprint_fp32_bytes`
(dense); FLOPs are multiply-accumulates per image at 3x32x32; the activation peak is fp16 at batch 1.
Prints a markdown table (and the CPU / GPU it ran on), writes JSON with `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import cpu_kind, cpu_model  # noqa: E402  (benchmarks/machine.py)

from prune_tracker.core.data import BatchLoader, load_splits  # noqa: E402
from prune_tracker.core.footprint import measure_footprint  # noqa: E402
from prune_tracker.core.models import build_model  # noqa: E402
from prune_tracker.core.pruning import PruneContext, get_method, make_permanent  # noqa: E402
from prune_tracker.core.training import TrainConfig, Trainer, evaluate, finetune_fn, fit, resolve_device  # noqa: E402

FOOTPRINT_KEYS = ("params_total", "params_nonzero", "footprint_fp32_bytes", "footprint_best_bytes", "flops_dense",
                  "flops_effective", "activation_peak_fp16_bytes")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | synthetic")
    parser.add_argument("--data-dir", default=None, help="CIFAR root, ImageFolder tree or .tar.gz of one")
    parser.add_argument("--archs", default="torchvision:mobilenet_v3_small,torchvision:resnet18")
    parser.add_argument("--methods", default="lamp,li_filters", help="comma list of registered methods")
    parser.add_argument("--ratios", default="0.5,0.7")
    parser.add_argument("--epochs", type=float, default=15, help="training epochs of each base model")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--finetune-epochs", type=float, default=3, help="the one fine-tuning budget")
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--train-subset", type=int, default=0, help="class-balanced training subset; 0 = all")
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="write the rows as JSON")
    return parser.parse_args()


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{torch.get_num_threads()}-thread {cpu_model()} with {cpu_kind()}"


def test_accuracy(model: nn.Module, splits, device: torch.device) -> float:
    return evaluate(model, splits.test, splits, device, tta_flip=True)[0]


def footprint(model: nn.Module) -> dict[str, float]:
    metrics = measure_footprint(model).metrics
    return {k: metrics[k] for k in FOOTPRINT_KEYS}


def train_base(arch: str, splits, args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, float]:
    torch.manual_seed(args.seed)
    model = build_model(arch, splits.num_classes)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule="onecycle",
                         label_smoothing=0.1, seed=args.seed)
    trainer = Trainer(model, splits, config, device, progress=False)
    started = time.perf_counter()
    fit(trainer)
    return trainer.eval_model.eval(), time.perf_counter() - started


def prune_context(splits, args: argparse.Namespace, device: torch.device) -> PruneContext:
    config = TrainConfig(epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.finetune_lr,
                         schedule="cosine", warmup_fraction=0.0, label_smoothing=0.1, seed=args.seed)
    calibration = BatchLoader(splits.train, 256, splits.mean, splits.std, device=device, channels_last=False)
    val = splits.val if len(splits.val) else splits.train
    return PruneContext(
        example_input=torch.zeros(1, *splits.test.images.shape[1:], device=device),
        calibration_batches=lambda: iter(calibration),
        evaluate=lambda model: evaluate(model, val, splits, device, tta_flip=True)[0],
        finetune=finetune_fn(splits, config, device),
        device=device,
        log=lambda msg: print(f"  {msg}", file=sys.stderr),
    )


def prune_row(arch: str, base: nn.Module, method: str, ratio: float, splits, ctx: PruneContext,
              args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    started = time.perf_counter()
    result = get_method(method).prune(base, ratio, ctx)
    model = result.model.to(device)
    pruned_accuracy = test_accuracy(model, splits, device)
    ctx.finetune(model, args.finetune_epochs)
    make_permanent(model)
    row = {"arch": arch, "method": method, "ratio": ratio, "test_accuracy_pruned": pruned_accuracy,
           "test_accuracy": test_accuracy(model, splits, device), "seconds": time.perf_counter() - started,
           **footprint(model)}
    return row


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| arch | method | ratio | params (nonzero) | test acc pruned | test acc after ft | footprint_best | "
             "fp32 dense | MACs (effective) | act. peak fp16 |", "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['arch'].removeprefix('torchvision:')} | {r['method']} | {r['ratio']:g} | "
            f"{r['params_nonzero']:,.0f} | {_percent(r.get('test_accuracy_pruned'))} | "
            f"{r['test_accuracy']:.2%} | {r['footprint_best_bytes']:,.0f} B | {r['footprint_fp32_bytes']:,.0f} B | "
            f"{r['flops_effective']:,.0f} | {r['activation_peak_fp16_bytes']:,.0f} B |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    splits = load_splits(args.dataset, args.data_dir, train_subset=args.train_subset, val_size=args.val_size,
                         seed=args.seed)
    ctx = prune_context(splits, args, device)
    rows = []
    for arch in args.archs.split(","):
        base, seconds = train_base(arch, splits, args, device)
        rows.append({"arch": arch, "method": "none (base)", "ratio": 0.0, "test_accuracy": test_accuracy(
            base, splits, device), "seconds": seconds, **footprint(base)})
        print(f"{arch}: base {rows[-1]['test_accuracy']:.2%} after {seconds:.0f} s", file=sys.stderr)
        for method in args.methods.split(","):
            for ratio in (float(r) for r in args.ratios.split(",")):
                rows.append(prune_row(arch, base, method, ratio, splits, ctx, args, device))
                print(f"  {method} {ratio:g}: {rows[-1]['test_accuracy']:.2%}", file=sys.stderr)
    print(f"{splits.dataset} ({splits.source}), {len(splits.train)} training images, {args.epochs:g} epochs, "
          f"fine-tuning {args.finetune_epochs:g} epochs; {machine(device)}; torch {torch.__version__}")
    print(markdown(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "machine": machine(device), "rows": rows},
                                             indent=2))


if __name__ == "__main__":
    main()
