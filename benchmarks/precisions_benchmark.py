"""Precisions x sparsity: every row is a real `prune` MLflow run of the job layer (the code of `mlflow run . -e
prune`), read back from the tracking store; each run is measured at every precision (fp16, int8, int4, w8a8).

    python benchmarks/precisions_benchmark.py run --base runs:/<id>/model --data-dir DATA \
        --methods global_l1,lamp --sparsities 0.5,0.7,0.8,0.9 --finetune-epochs 2 --qat none,int4 --out rows.json
    python benchmarks/precisions_benchmark.py table --json rows.json [--json more.json]   # re-render stored rows

"x smaller" has one meaning (`core.frontier.dense_reference`): weight bytes against the dense parent's fp32
weights; w8a8 totals (int8 weights + int8 activation peak) against its fp32 weights + fp32 activation peak.
Accuracies are test accuracies (the grid has no selection to make); every row says where it ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import where  # noqa: E402  (benchmarks/machine.py)

from prune_tracker import jobs, tracking  # noqa: E402
from prune_tracker.core.frontier import dense_reference  # noqa: E402
from prune_tracker.core.training import TrainConfig, resolve_device  # noqa: E402

PRECISIONS = ("fp16", "int8", "int4", "w8a8")
BYTES = {"fp16": "footprint_best_bytes", "int8": "footprint_best_int8_bytes", "int4": "footprint_best_int4_bytes",
         "w8a8": "total_w8a8_bytes"}


def run_prune(args: argparse.Namespace, method: str, sparsity: float, qat: str) -> dict[str, Any]:
    spec = jobs.PruneSpec(args.base, method, sparsity, finetune_epochs=args.finetune_epochs, qat=qat,
                          data=jobs.DataSpec.inherited(args.data_dir),
                          train=TrainConfig(lr=args.lr, schedule="cosine", seed=args.seed),
                          run=jobs.RunSpec(args.experiment, args.device, progress=False, precisions=("fp16", "int8",
                                                                                                       "int4")))
    started = time.perf_counter()
    run_id = jobs.prune_model(spec)
    return {"run_id": run_id, "seconds": time.perf_counter() - started, **tracking.run_metrics(run_id)}


def rows_of(method: str, sparsity: float, qat: str, metrics: dict[str, float], parent: dict[str, float],
            place: str) -> list[dict[str, Any]]:
    rows = []
    for precision in PRECISIONS:
        name = BYTES[precision]
        if name not in metrics:
            continue
        test = metrics.get("test_accuracy_fp16" if precision == "fp16" else f"test_accuracy_{precision}",
                           metrics.get("test_accuracy"))
        rows.append({"method": method, "sparsity": sparsity, "qat": qat, "precision": precision,
                     "test_accuracy": test, "bytes": metrics[name],
                     "drop_pt": 100 * (parent["test_accuracy"] - test),
                     "cost_vs_fp32_pt": 100 * (metrics["test_accuracy"] - test),
                     "x_smaller": dense_reference(parent, name) / metrics[name],
                     "seconds": metrics.get("seconds"), "run_id": metrics.get("run_id"), "where": place})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | sparsity | qat | precision | test acc | drop vs dense fp32 parent (pt) | "
             "cost vs the same model in fp32 (pt) | bytes | x smaller than dense fp32 | run | where |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {100 * r['sparsity']:.0f}% | {r['qat']} | {r['precision']} | "
                     f"{100 * r['test_accuracy']:.2f}% | {r['drop_pt']:+.2f} | {r['cost_vs_fp32_pt']:+.2f} | "
                     f"{r['bytes']:,.0f} | {r['x_smaller']:.1f}x | {(r['run_id'] or '')[:8]} | {r['where']} |")
    return "\n".join(lines)


def table_from_json(paths: list[str]) -> list[dict[str, Any]]:
    """Rows re-rendered from stored results (the runs' own metrics and the parent's): every figure recomputed with
    today's definitions, nothing re-measured."""
    rows = []
    for path in paths:
        doc = json.loads(Path(path).read_text())
        parent = doc["parent"]
        for r in doc["rows"]:
            if "metrics" in r:
                rows += rows_of(r["method"], r["sparsity"], r["qat"], r["metrics"], parent, doc["device"])
            else:  # stored before rows kept their metrics: the row's own bytes and accuracy
                name = BYTES[r["precision"]]
                rows.append({**r, "x_smaller": dense_reference(parent, name) / r["bytes"], "where": doc["device"],
                             "cost_vs_fp32_pt": r.get("cost_vs_fp32_pt", float("nan"))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "table"))
    parser.add_argument("--base", help="the dense parent, runs:/<id>/model")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--experiment", default="precisions-benchmark")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="global_l1,lamp")
    parser.add_argument("--sparsities", default="0,0.5,0.7,0.8,0.9")
    parser.add_argument("--qat", default="none,int4")
    parser.add_argument("--finetune-epochs", type=float, default=2.0)
    parser.add_argument("--json", action="append", default=[], help="table: stored rows (repeatable)")
    parser.add_argument("--out", default=None, help="run: JSON file for the rows")
    args = parser.parse_args()
    if args.command == "table":
        print(markdown(table_from_json(args.json)))
        return
    device = resolve_device(args.device)
    parent = tracking.run_metrics(tracking.resolve_run_id(args.base))
    rows = []
    for method in args.methods.split(","):
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            for qat in args.qat.split(","):
                if qat != "none" and sparsity == 0:
                    continue
                metrics = run_prune(args, method, sparsity, qat)
                rows += rows_of(method, sparsity, qat, metrics, parent, where(device))
    print(markdown(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"base": args.base, "parent": parent, "device": where(device),
                                              "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
