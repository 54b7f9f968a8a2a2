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


# One line per command in `prune-tracker --help` (the docstrings hold the details: `prune-tracker <command> -h`).
SHORT_HELP = {
    "train": "Train a model and log it (stage=train).",
    "evaluate": "Evaluate a model: accuracy, loss, footprint, latency.",
    "prune": "Prune a model with a registered method, then recover it.",
    "finetune": "Fine-tune a pruned model, keeping its masks or widths.",
    "footprint": "Print a model's bytes per format and precision.",
    "methods": "List the pruning methods and their options.",
    "archs": "List the architectures and their parameter counts.",
    "compare": "Accuracy vs footprint: the Pareto front across runs.",
    "report": "Write the HTML report of an experiment.",
    "main": "The whole study: train, prune, compare, register, report.",
    "sweep": "Prune one base with methods x ratios (or byte targets).",
    "search": "Optuna search for the best model within a budget.",
    "server": "Start a team tracking server (PostgreSQL, auth, TLS).",
    "users": "Manage the users of a team server.",
    "gc": "Mark orphan runs KILLED (RUNNING or SCHEDULED, owner gone).",
}

for _command in (*lab.COMMANDS, *studies.COMMANDS, *server.COMMANDS):
    _command.short_help = SHORT_HELP.get(_command.name, _command.short_help)
    cli.add_command(_command)

__all__ = ["cli", "compare", "evaluate", "finetune", "main_pipeline", "prune", "report", "run_entrypoint", "search",
           "sweep", "train"]
