"""The compression frontier: every row is a real `prune` MLflow run of the job layer (the same code as
`mlflow run . -e prune`), read back from the tracking store; prints markdown tables and writes JSON.

Two grids, from one dense base model (a train run's `runs:/<id>/model`):

    # precisions x sparsity (quantised-formats issue): methods x sparsities x qat, every precision measured
    python benchmarks/frontier_benchmark.py precisions --base runs:/<id>/model --data-dir DATA \
        --methods global_l1,lamp --sparsities 0,0.5,0.7,0.8,0.9 --finetune-epochs 2 --qat none,int4

    # recovery recipes at byte targets (recovery-recipes issue): targets x recipes x budgets x seeds
    python benchmarks/frontier_benchmark.py frontier --base runs:/<id>/model --data-dir DATA --targets 10,20 \
        --recipes finetune,rewind,distill,distill+rewind,iterative+rewind --budgets 2 --seeds 0,1 \
        --target-metric footprint_best_int8_bytes

A target `10` means 10x smaller than the base's dense fp32 bytes, in `--target-metric` (a ceiling: the
searched ratio's bytes are at or under it). Accuracies are test accuracies of the measured precision (int8 for
an int8 target); drops are against the dense fp32 parent. The device is chosen by the script (`auto`: CUDA
when present) and printed with the CPU kind beside every row.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import where  # noqa: E402  (benchmarks/machine.py)

from prune_tracker import jobs, tracking  # noqa: E402
from prune_tracker.core.training import TrainConfig, resolve_device  # noqa: E402

ANCHORS = """Published anchors (CIFAR-10, official data; this lab uses a JPEG copy, so compare drops, not levels):
- Renda et al. 2020 (learning-rate rewinding, unstructured): ResNet-20 79% sparse +0.02 pt, 89% -0.96 pt;
  ResNet-56 89% +0.1 pt.
- Carreira-Perpinan & Idelbayev 2018 (Learning-Compression): ResNet-32 90% sparse -0.16 pt.
- Choi et al. 2017 (pruning + quantisation): ResNet-32 80% pruned + quantised, 22x smaller, +0.1 pt.
- Han et al. 2016 (Deep Compression): pruning 9-13x, with quantisation 35-49x (ImageNet)."""

RECIPES = {  # name -> Recovery fields (the budget sets finetune_epochs; iterative spends half in rounds)
    "finetune": {},
    "rewind": {"finetune_schedule": "rewind"},
    "distill": {"distill_alpha": 0.7},
    "distill+rewind": {"finetune_schedule": "rewind", "distill_alpha": 0.7},
    "iterative+rewind": {"finetune_schedule": "rewind", "rounds": 3},
}


def method_options(text: str) -> dict[str, str]:
    """`scope=all,p=1` -> {"scope": "all", "p": "1"} (the method's own options, as `-P name=value`)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"--options {text!r}: expected name=value[,name=value]")
    return dict(pairs)


def dense_bytes(parent: dict[str, float], target_metric: str) -> float:
    """The dense fp32 reference of a target: weights, plus the fp32 activation peak for a `total_*` metric."""
    weights = parent["footprint_fp32_bytes"]
    return weights + parent["activation_peak_fp32_bytes"] if target_metric.startswith("total_") else weights


def metric_precision(target_metric: str) -> str:
    found = re.search(r"(int8|int4|w8a8)", target_metric)
    return found.group(1) if found else "fp16"


def run_prune(args: argparse.Namespace, method: str, ratio: float, finetune_epochs: float, seed: int,
              recovery: jobs.Recovery, qat: str = "none", target: float | None = None) -> dict[str, Any]:
    data = jobs.DataOptions(None, args.data_dir, None, None, None)
    config = TrainConfig(epochs=finetune_epochs, lr=args.lr, schedule="cosine", ema_decay=0.0, seed=seed)
    run = jobs.RunOptions(args.experiment, args.device, progress=False, precisions=tuple(args.precisions.split(",")))
    started = time.perf_counter()
    run_id = jobs.prune_model(args.base, method, ratio, data, config, run, finetune_epochs,
                              options=method_options(args.options),
                              target_bytes=int(target) if target else None, target_metric=args.target_metric,
                              qat=qat, recovery=recovery)
    return {"run_id": run_id, "seconds": time.perf_counter() - started, **tracking.run_metrics(run_id)}


def precision_grid(args: argparse.Namespace, parent: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for method in args.methods.split(","):
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            for qat in (args.qat or "none,int4").split(","):
                if qat != "none" and sparsity == 0:
                    continue
                m = run_prune(args, method, sparsity, args.finetune_epochs, 0, jobs.Recovery(), qat)
                for p in ("fp16", "int8", "int4", "w8a8"):
                    bytes_key = "total_w8a8_bytes" if p == "w8a8" else f"footprint_best_{p}_bytes"
                    rows.append({"method": method, "sparsity": sparsity, "qat": qat, "precision": p,
                                 "test_accuracy": m.get(f"test_accuracy_{p}"), "bytes": m.get(bytes_key),
                                 "drop_pt": 100 * (parent["test_accuracy"] - m.get(f"test_accuracy_{p}", 0)),
                                 "cost_vs_fp32_pt": 100 * (m["test_accuracy"] - m.get(f"test_accuracy_{p}", 0)),
                                 "x_smaller": parent["footprint_fp32_bytes"] / m[bytes_key] if m.get(bytes_key)
                                 else None, "seconds": m["seconds"], "run_id": m["run_id"]})
                print_rows(rows[-4:], header=False)
    return rows


def frontier_grid(args: argparse.Namespace, parent: dict[str, float]) -> list[dict[str, Any]]:
    precision = metric_precision(args.target_metric)
    accuracy_key = "test_accuracy" if precision == "fp16" else f"test_accuracy_{precision}"
    grid = itertools.product([float(t) for t in args.targets.split(",")], args.recipes.split(","),
                             [float(b) for b in args.budgets.split(",")], (args.qat or "none").split(","))
    rows = []
    for factor, recipe, budget, qat in grid:
        target = dense_bytes(parent, args.target_metric) / factor
        fields = dict(RECIPES[recipe])
        finetune = budget
        if "rounds" in fields:  # half of the budget retrains between rounds, half at the end
            fields["round_epochs"] = budget / 2 / fields["rounds"]
            finetune = budget / 2
        runs = [run_prune(args, args.method, 0.5, finetune, seed, jobs.Recovery(**fields), qat, target=target)
                for seed in [int(s) for s in args.seeds.split(",")]]
        accuracies = [m[accuracy_key] for m in runs]
        mean, last = statistics.mean(accuracies), runs[-1]
        rows.append({"target_x": factor, "method": args.method, "options": args.options or "-", "recipe": recipe,
                     "qat": qat, "budget_epochs": budget, "precision": precision,
                     "bytes": last.get(args.target_metric), "ratio": last.get("ratio"), "n": len(accuracies),
                     "test_accuracy_mean": mean,
                     "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                     "drop_pt": 100 * (parent["test_accuracy"] - mean),
                     "x_smaller": dense_bytes(parent, args.target_metric) / last[args.target_metric],
                     "minutes_per_run": statistics.mean(m["seconds"] for m in runs) / 60,
                     "where": where(resolve_device(args.device)), "last_run_id": last["run_id"]})
        print_rows(rows[-1:], header=False)
    return rows


def print_rows(rows: list[dict[str, Any]], header: bool = True) -> None:
    if not rows:
        return
    keys = [k for k in rows[0] if k not in ("run_id", "last_run_id")]
    if header:
        print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (row[k] for k in keys)]
        print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", choices=("precisions", "frontier"))
    parser.add_argument("--base", required=True, help="the dense parent, runs:/<id>/model")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--experiment", default="frontier-benchmark")
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak lr (cosine recipes)")
    parser.add_argument("--methods", default="global_l1,lamp")
    parser.add_argument("--method", default="lamp", help="frontier grid: the pruning method")
    parser.add_argument("--sparsities", default="0,0.5,0.7,0.8,0.9")
    parser.add_argument("--qat", default=None, help="precisions grid: none,int4 by default; frontier: none")
    parser.add_argument("--options", default="", help="method options, e.g. scope=all,per_layer=uniform")
    parser.add_argument("--finetune-epochs", type=float, default=2.0)
    parser.add_argument("--targets", default="10,20,40")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--budgets", default="2,10,30")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--target-metric", default="footprint_best_int8_bytes")
    parser.add_argument("--precisions", default="fp16,int8,int4", help="measured on every run (frontier: int8)")
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    args = parser.parse_args()
    device = resolve_device(args.device)
    parent = tracking.run_metrics(tracking.resolve_run_id(args.base))
    print(f"base {args.base}: test accuracy {parent['test_accuracy']:.4f}, dense fp32 "
          f"{parent['footprint_fp32_bytes']:.0f} B; device: {where(device)}; torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    rows = (precision_grid if args.grid == "precisions" else frontier_grid)(args, parent)
    print(f"\n{args.grid} grid on {where(device)}, {time.perf_counter() - started:.0f} s\n")
    print_rows(rows)
    print("\n" + ANCHORS)
    if args.out:
        Path(args.out).write_text(json.dumps({"base": args.base, "parent": parent, "device": where(device),
                                              "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
