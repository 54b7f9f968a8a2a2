"""What each entry point does: a job takes one spec (`jobs.specs`), composes the numeric core (`core`, often through
`core.flows`) and logs everything through `tracking`. The CLI, the MLproject scripts, the studies and the benchmarks
build the specs; nothing else calls the core on a job's behalf.

- `train` (jobs/train.py), `evaluate_model` (evaluate.py), `prune_model` (prune.py), `finetune_model`
  (finetune.py);
- `lineage.py`: the model a job starts from and what it inherits; `outputs.py`: what every model-producing run logs.
"""

from prune_tracker.jobs.evaluate import evaluate_model
from prune_tracker.jobs.finetune import finetune_model
from prune_tracker.jobs.prune import prune_model
from prune_tracker.jobs.specs import (
    DataSpec,
    EvaluateSpec,
    FinetuneSpec,
    PruneSpec,
    Recovery,
    RunSpec,
    TrainSpec,
)
from prune_tracker.jobs.train import train

__all__ = ["DataSpec", "EvaluateSpec", "FinetuneSpec", "PruneSpec", "Recovery", "RunSpec", "TrainSpec",
           "evaluate_model", "finetune_model", "prune_model", "train"]
