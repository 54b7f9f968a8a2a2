"""The run a job logs into: named for what it is, tagged with its stage, lineage and the spec's extra tags."""

from __future__ import annotations

from typing import Any

from prune_tracker import tracking
from prune_tracker.jobs.specs import RunSpec


def lineage_tags(tags: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in tags.items() if v not in (None, "")}


def start_run(run: RunSpec, stage: str, tags: dict[str, Any], default_name: str, resume_run_id: str | None = None):
    """A tracked run named `run.run_name` if one was given, else `default_name` (what the run is)."""
    return tracking.tracked_run(stage, run.experiment_name, run.run_name or default_name,
                                lineage_tags({**tags, **run.extra_tags}), nested=run.nested,
                                resume_run_id=resume_run_id or run.resume_run_id)
