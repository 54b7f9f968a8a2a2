"""Time query_runs + pareto_front over N runs (default 5,000) in a fresh SQLite store.

Run creation (MlflowClient.create_run + log_batch + set_terminated; not timed) is the slow part: the store
goes to /dev/shm when it exists. Goal: query + front < 5 s for 5,000 runs.

    .venv/bin/python benchmarks/compare_benchmark.py [--runs 5000] [--store DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prune_tracker.analysis import compare  # noqa: E402
from prune_tracker.core.footprint import FORMATS  # noqa: E402
from prune_tracker.core.frontier import pareto_front  # noqa: E402
from prune_tracker.tracking.queries import RunQuery, query_runs  # noqa: E402

EXPERIMENT = "bench"
METHODS = ("l1", "random", "taylor", "gmp", "thinet")
RATIOS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
FOOTPRINTS = tuple(f.metric for f in FORMATS.values() if not f.is_choice)  # "best" formats: their minimum
CHOICES = tuple(f.metric for f in FORMATS.values() if f.is_choice)


def run_metrics(rng: random.Random, ratio: float, params: float, acc: float) -> dict[str, float]:
    nonzero = params * (1 - ratio)
    m = {
        "test_accuracy": acc,
        "val_accuracy": acc - rng.random() * 0.01,
        "params_total": params,
        "params_nonzero": nonzero,
        "params_reduction": 1 / max(1 - ratio, 1e-3),
        "sparsity_global": ratio,
        "activation_peak_fp32_bytes": 2.6e5,
        "activation_peak_fp16_bytes": 1.3e5,
        "flops_dense": 4.1e7,
        "flops_effective": 4.1e7 * (1 - ratio),
        "flops_reduction": 1 / max(1 - ratio, 1e-3),
        "micronet_score": rng.random(),
    }
    for i, name in enumerate(FOOTPRINTS):
        m[name] = nonzero * (4 - 0.4 * i) + rng.random() * 100
    m |= {name: min(m[n] for n in FOOTPRINTS) for name in CHOICES}
    m["total_fp16_best_bytes"] = m["footprint_best_bytes"] + 1.3e5
    return m


def log_run(client: MlflowClient, exp_id: str, tags: dict[str, str], metrics: dict[str, float]) -> str:
    run_id = client.create_run(exp_id, tags=tags).info.run_id
    params = [Param(k, tags[k]) for k in ("dataset", "arch", "method")]
    params += [Param("ratio", tags["ratio"])] if "ratio" in tags else []
    client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()], params=params)
    client.set_terminated(run_id)
    return run_id


def populate(client: MlflowClient, exp_id: str, n_runs: int, seed: int = 0) -> int:
    """n_runs runs: one train root per 20 runs, then prune/finetune children; 1% lack footprint metrics."""
    rng = random.Random(seed)
    roots: list[tuple[str, dict[str, str]]] = []
    for i in range(n_runs):
        if i and i % 1000 == 0:
            print(f"  created {i} runs", flush=True)
        if i % 20 == 0:
            base = {
                "dataset": rng.choice(["cifar10", "cifar100"]),
                "arch": rng.choice(["resnet20", "vgg11_bn"]),
            }
            tags = base | {"stage": "train", "method": "none"}
            roots.append(
                (log_run(client, exp_id, tags, run_metrics(rng, 0.0, 2.7e5, 0.9 + rng.random() * 0.02)), base)
            )
            continue
        parent, base = roots[-1]
        ratio = rng.choice(RATIOS)
        tags = base | {
            "stage": rng.choice(["prune", "finetune"]),
            "method": rng.choice(METHODS),
            "parent_run_id": parent,
            "ratio": str(ratio),
        }
        metrics = run_metrics(rng, ratio, 2.7e5, 0.9 - ratio**3 * rng.random() * 0.3)
        if rng.random() < 0.01:
            metrics = {k: v for k, v in metrics.items() if not k.startswith("footprint")}
        log_run(client, exp_id, tags, metrics)
    return n_runs


def timed(fn, repeat: int) -> tuple[float, object]:  # noqa: ANN001
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--store", default=None, help="directory for the fresh SQLite store (default: tmp)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    root = Path(
        args.store
        or tempfile.mkdtemp(prefix="compare-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
    )
    root.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    existing = client.get_experiment_by_name(EXPERIMENT)
    if existing is not None:  # --store pointing at an earlier benchmark store: time it again
        print(f"reusing the runs of {root} (--runs ignored)")
    else:
        exp_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
        start = time.perf_counter()
        populate(client, exp_id, args.runs)
        print(f"created {args.runs} runs in {time.perf_counter() - start:.1f} s (not counted) under {root}")

    def query_and_front() -> tuple[int, int, int]:
        points, missing = query_runs(RunQuery([EXPERIMENT]))
        return len(points), len(pareto_front(points)), len(missing)

    def filtered() -> tuple[int, int, int]:  # candidates without their train parents: roots fetched by id
        points, missing = query_runs(RunQuery([EXPERIMENT], dataset="cifar10", stage="finetune"))
        return len(points), len(pareto_front(points)), len(missing)

    for label, fn in (
        ("query_runs + pareto_front (all)", query_and_front),
        ("query_runs + pareto_front (dataset+stage filter)", filtered),
    ):
        seconds, (n, n_front, n_missing) = timed(fn, args.repeat)
        status = "OK" if seconds < 5 else "SLOW"
        print(
            f"{label}: {seconds:.2f} s median of {args.repeat} [{status}] runs={n} front={n_front} "
            f"missing={n_missing}"
        )
    seconds, _ = timed(lambda: compare.run_compare([EXPERIMENT], dataset="cifar10", budget="100KB"), 1)
    print(f"run_compare (query, front, table, figure, logging a compare run): {seconds:.2f} s")


if __name__ == "__main__":
    main()
