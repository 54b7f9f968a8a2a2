"""`prune-tracker` command line: one click command per MLproject entry point (the scripts in `entrypoints/` call
these same commands), grouped by what they serve: the lab (`lab.py`: train, evaluate, prune, finetune, footprint,
methods, archs, compare, report), the studies (`studies.py`: main, sweep, search) and the team server
(`server.py`: server, users, gc). Commands parse and validate into job specs, then call `prune_tracker.jobs` or
the studies; shared option groups and types are in `options.py`."""

from __future__ import annotations

import click

from prune_tracker.cli import lab, server, studies
from prune_tracker.cli.lab import compare, evaluate, finetune, prune, report, train
from prune_tracker.cli.options import OneLineErrors, run_entrypoint
from prune_tracker.cli.studies import main_pipeline, search, sweep


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """MLflow-tracked pruning of CIFAR CNNs: train, prune, fine-tune, evaluate, compare."""


for _command in (*lab.COMMANDS, *studies.COMMANDS, *server.COMMANDS):
    cli.add_command(_command)

__all__ = ["cli", "compare", "evaluate", "finetune", "main_pipeline", "prune", "report", "run_entrypoint", "search",
           "sweep", "train"]
