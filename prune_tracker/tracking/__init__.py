"""The one place that talks to MLflow. The package re-exports what the rest of prune-tracker calls
(`from prune_tracker import tracking; tracking.<name>`); each module holds one idea:

    runs.py            the experiment and run a command logs in (owner tags, heartbeat, end status), params, metrics
    models.py          logging a model (`model` + `model_spec/` + deployable folders), what a model URI names
    loading.py         loading a model; which loads unpickle (only foreign models, only with an opt-in)
    foreign_models.py  models logged by other tools: the one place that unpickles, and the opt-in it checks
    identity.py        what a reusable result depends on (code, models by content, data, parameters): reuse keys
    artifacts.py       documents, figures, checkpoints of a run
    owner.py, gc.py    who owns a run; orphans (RUNNING or SCHEDULED, their process gone) marked KILLED
    trials.py          trial runs of sweeps and searches (SCHEDULED, lost attempts, client settings for workers)
    queries.py, registry.py   compare's run query and the model registry
    server/            the team tracking server (PostgreSQL, basic-auth, TLS, private files)
"""

from __future__ import annotations

import os

from mlflow.exceptions import MlflowException

from prune_tracker.tracking.artifacts import (
    download_artifact,
    load_checkpoint,
    load_dict,
    log_artifact,
    log_checkpoint,
    log_dict,
    log_figure,
    log_text,
    set_tags,
    stage_run,
)
from prune_tracker.tracking.errors import ArtifactWriteError, ModelLoadError, artifact_writes
from prune_tracker.tracking.foreign_models import (
    TRUST_PICKLE_ENV,
    PickleRefused,
    pickle_trusted,
    trusting_pickle,
)
from prune_tracker.tracking.gc import mark_orphans_killed
from prune_tracker.tracking.identity import finished_run_with_tags, reuse_key
from prune_tracker.tracking.loading import LoadedModel, load_model, load_model_file
from prune_tracker.tracking.models import (
    MODEL_ARTIFACT,
    PRECISION_ARTIFACTS,
    QUANTISED_ARTIFACTS,
    SPEC_DIR,
    SPEC_FILE,
    STATE_FILE,
    log_files_model,
    log_model,
    logged_model_uri,
    resolve_model_location,
    resolve_run_id,
    runtime_requirements,
)
from prune_tracker.tracking.runs import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    ancestor_run,
    fail_launched_run,
    lineage_params,
    log_dataset,
    log_metrics,
    log_params,
    run_metrics,
    run_params,
    run_tags,
    runs_page_url,
    short_id,
    tracked_run,
    ui_hint,
    use_experiment,
)

# Artifact downloads while loading a model would otherwise draw progress bars into command output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TrackingError = MlflowException  # what the tracking server or store raises, for callers without an MLflow import

__all__ = [
    "MODEL_ARTIFACT", "PRECISION_ARTIFACTS", "QUANTISED_ARTIFACTS", "SPEC_DIR", "SPEC_FILE", "STATE_FILE",
    "EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "TRUST_PICKLE_ENV", "TrackingError", "ArtifactWriteError",
    "ModelLoadError", "PickleRefused", "LoadedModel", "artifact_writes", "ancestor_run", "download_artifact",
    "fail_launched_run", "finished_run_with_tags", "lineage_params", "load_checkpoint", "load_dict", "load_model",
    "load_model_file", "log_artifact", "log_checkpoint", "log_dataset", "log_dict", "log_figure", "log_files_model",
    "log_metrics", "log_model", "log_params", "log_text", "logged_model_uri", "mark_orphans_killed",
    "pickle_trusted", "resolve_model_location", "resolve_run_id", "reuse_key", "run_metrics", "run_params",
    "run_tags", "runs_page_url", "runtime_requirements", "set_tags", "short_id", "stage_run", "tracked_run",
    "trusting_pickle", "ui_hint", "use_experiment",
]
