"""Wall time of one sweep grid run with `--executor local` (trials one after another) and `--executor ray` (a local
`ray.init(num_cpus=N)`, one CPU and one torch thread per trial), in a fresh SQLite store.

A ResNet-20 base is trained on the synthetic dataset first (not timed); then the same grid (methods x ratios x seeds,
fine-tuning each trial) runs once per executor, each in its own experiment so that nothing is reused. The Ray time
includes `ray.init` and the workers' start-up, as a user sees it. The machine's load average is printed before
and after: on a CPU shared with other work the figures move.

    .venv/bin/python benchmarks/sweep_benchmark.py [--cpus 2] [--finetune-epochs 0.5] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_STORE = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STORE / 'mlflow.db'}"
os.chdir(_STORE)  # a SQLite store puts artifacts under ./mlruns of the working directory

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import cpu_kind, cpu_model  # noqa: E402  (benchmarks/machine.py)

from prune_tracker.core.training import TrainConfig  # noqa: E402
from prune_tracker.jobs import DataSpec, RunSpec, TrainSpec, train  # noqa: E402
from prune_tracker.studies.sweep import PruneBase, SweepConfig, run_sweep  # noqa: E402


def base_model(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.cpus)
    data = DataSpec("synthetic", None, args.train_subset, args.val_size, 0)
    config = TrainConfig(epochs=args.base_epochs, batch_size=128, lr=0.1)
    run_id = train(TrainSpec("resnet20", data, config, RunSpec("bench-base", "cpu", False, precisions=())))
    return f"runs:/{run_id}/model"


def sweep_seconds(base_uri: str, executor: str, args: argparse.Namespace) -> tuple[float, list[float]]:
    base = PruneBase(base_uri, DataSpec.inherited(), precisions=tuple(args.precisions),
                     device="cpu", experiment_name=f"bench-{executor}")
    config = SweepConfig(base, args.methods.split(","), [float(r) for r in args.ratios.split(",")],
                         seeds=[int(s) for s in args.seeds.split(",")],
                         recipe_axes={"finetune_epochs": [args.finetune_epochs]}, executor=executor,
                         ray_num_cpus=args.cpus, log=lambda _line: None)
    torch.set_num_threads(1)
    started = time.perf_counter()
    result = run_sweep(config)
    wall = time.perf_counter() - started
    assert not result.failed and not any(t.reused for t in result.trials), "every trial must run and finish"
    return wall, [t.seconds for t in result.trials]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=2, help="Ray's num_cpus (and the base's torch threads)")
    parser.add_argument("--methods", default="global_l1,lamp")
    parser.add_argument("--ratios", default="0.5,0.8")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--finetune-epochs", type=float, default=0.5)
    parser.add_argument("--precisions", default="", help="comma list measured on every trial ('' = none)")
    parser.add_argument("--train-subset", type=int, default=2000)
    parser.add_argument("--val-size", type=int, default=400)
    parser.add_argument("--base-epochs", type=float, default=1.0)
    args = parser.parse_args()
    args.precisions = [p for p in args.precisions.split(",") if p]
    print(f"CPU: {cpu_model()} ({cpu_kind()}), {os.cpu_count()} cores; torch {torch.__version__}; store {_STORE}")
    base_uri = base_model(args)
    n = len(args.methods.split(",")) * len(args.ratios.split(",")) * len(args.seeds.split(","))
    print(f"grid: {args.methods} x ratios {args.ratios} x seeds {args.seeds} = {n} trials of ResNet-20 on synthetic "
          f"({args.train_subset} train / {args.val_size} val images, 1,000 test), {args.finetune_epochs} fine-tuning "
          f"epoch(s) each, precisions '{','.join(args.precisions)}'")
    for executor in ("local", "ray"):
        load = os.getloadavg()[0]
        wall, trials = sweep_seconds(base_uri, executor, args)
        print(f"{executor:5s}: sweep wall {wall:6.1f} s; per trial median {statistics.median(trials):5.1f} s "
              f"(min {min(trials):.1f}, max {max(trials):.1f}); load average {load:.2f} -> {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
