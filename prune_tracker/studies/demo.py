"""`make demo`: the `main` pipeline with its demo defaults on CIFAR-10 (torchvision's download into the
cache, or a local copy at `DATA_DIR`). Where neither is possible it says so in one warning line and
falls back to the synthetic dataset, so every run it logs says dataset=synthetic. The regular entry
points never fall back."""

from __future__ import annotations

import os
import sys
from dataclasses import replace

from prune_tracker.core.data import DataError, load_splits
from prune_tracker.studies.pipeline import PipelineConfig, PipelineError, demo_data, run_pipeline
from prune_tracker.tracking import ui_hint


def choose_dataset() -> tuple[str, str | None]:
    data_dir = os.environ.get("DATA_DIR") or None
    try:
        load_splits("cifar10", data_dir, val_size=0)
        return "cifar10", data_dir
    except DataError as err:
        print(f"WARNING: CIFAR-10 is not available ({err}); the demo falls back to dataset=synthetic",
              file=sys.stderr, flush=True)
        return "synthetic", None


def main() -> None:
    dataset, data_dir = choose_dataset()
    # int8 only: each precision costs an evaluation of every logged model (the demo's time budget)
    config = PipelineConfig(data=replace(demo_data(), dataset=dataset, data_dir=data_dir), precisions=("int8",),
                            experiment_name=os.environ.get("DEMO_EXPERIMENT", "prune-tracker-demo"))
    try:
        result = run_pipeline(config)
    except PipelineError as err:
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"\npipeline run: {result.run_id}  (dataset={dataset})")
    for step, run_id in result.steps.items():
        print(f"  {step:28s} {run_id}{'  (reused)' if step in result.reused else ''}")
    if result.champion_uri:
        print(f"champion model: {result.champion_uri}")
    print(f"\n{ui_hint(result.run_id)}")


if __name__ == "__main__":
    main()
