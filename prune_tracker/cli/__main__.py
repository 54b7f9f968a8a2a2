"""`python -m prune_tracker.cli`: the `prune-tracker` command."""

from prune_tracker.cli import cli

cli()
