"""What a reusable result depends on, as one key. `main` steps, sweep and search trials and dense-small baselines
are reused only when a FINISHED run carries the same :func:`reuse_key` (tag ``reuse_key``), which hashes:

* the code: sha256 over the installed package's own ``.py`` files (relative path + content; nothing is skipped, git
  or not), plus the git commit when the package is its own checkout (the repository's top level is the package's
  parent folder). The HEAD of a repository the package merely sits in (a virtualenv inside another project) says
  nothing about this code and is not used;
* every model it starts from (params named ``model_uri`` or ``teacher_uri``, at any depth), by content: the URI is
  resolved to what it names now (``models:/name@alias`` -> version -> run and artifact) and the files a load reads
  are hashed (``model_spec/`` of a prune-tracker model, the logged model's files otherwise, a local file's bytes).
  Moving an alias or overwriting a model's files changes the key;
* the stage, the data and every other parameter, as given.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # prune_tracker/
REUSE_KEY_TAG = "reuse_key"
MODEL_PARAMS = frozenset({"model_uri", "teacher_uri"})  # params naming a model: identified by content


# ---------------------------------------------------------------- code


def source_hash(package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 over the package's .py files (relative path + content), in a stable order."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(str(path.relative_to(package_dir)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _git(package_dir: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=package_dir, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def own_checkout_commit(package_dir: Path = PACKAGE_DIR) -> str | None:
    """The HEAD commit when `package_dir` is the package folder of its own git checkout; None otherwise (not in
    git, or inside a repository whose top level is elsewhere, e.g. a virtualenv kept in another project)."""
    top = _git(package_dir, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != package_dir.resolve().parent:
        return None
    return _git(package_dir, "rev-parse", "HEAD")


@functools.cache
def code_identity(package_dir: Path = PACKAGE_DIR) -> str:
    """`git:<commit>+src:<hash>` for the package's own checkout, `src:<hash>` otherwise (see the module docstring).
    Computed once per process: a process runs the code it imported, whatever the files say later."""
    commit = own_checkout_commit(package_dir)
    return f"git:{commit}+src:{source_hash(package_dir)}" if commit else f"src:{source_hash(package_dir)}"


# ---------------------------------------------------------------- models


def _hash_files(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:24]


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:24]


@functools.lru_cache(maxsize=64)
def _stored_digest(run_id: str, artifact: str) -> str:
    """sha256 of the files loading `artifact` of run `run_id` reads (cached per process: a run's model files are
    written once, when the run logs them)."""
    from prune_tracker.tracking.loading import spec_files
    from prune_tracker.tracking.models import SPEC_DIR, VARIANT_ARTIFACTS, logged_model_uri, quantised_source

    uri = f"runs:/{run_id}/{artifact}"
    with tempfile.TemporaryDirectory() as tmp:
        if artifact in VARIANT_ARTIFACTS:
            source = quantised_source(uri, run_id, artifact)
            folder = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp)
        elif spec_files(uri, run_id):
            folder = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SPEC_DIR, dst_path=tmp)
        else:  # a foreign model: its MLflow model files
            source = logged_model_uri(run_id, artifact) or uri
            folder = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp)
        return _hash_files(Path(folder))


def model_identity(model_uri: str) -> str:
    """What a model URI names now, by content: `run:<run id>/<artifact>@sha256:<hash>` (an alias resolved to its
    version), or `file:sha256:<hash>` of a local file. An unknown model is a one-line ModelLoadError."""
    from prune_tracker.tracking.errors import ModelLoadError
    from prune_tracker.tracking.models import is_local_file, resolve_model_location

    if is_local_file(model_uri):
        path = Path(model_uri).expanduser().resolve()
        if not path.is_file():
            raise ModelLoadError(f"model file {model_uri!r} does not exist")
        stat = path.stat()
        return "file:sha256:" + _file_digest(str(path), stat.st_size, stat.st_mtime_ns)
    run_id, artifact = resolve_model_location(model_uri)
    return f"run:{run_id}/{artifact}@sha256:{_stored_digest(run_id, artifact)}"


# ---------------------------------------------------------------- the key


def _resolve_models(value: Any, resolve: Callable[[str], str]) -> Any:
    """`value` with every non-empty string under a MODEL_PARAMS key (at any depth) replaced by `resolve(it)`."""
    if isinstance(value, Mapping):
        return {k: (resolve(v) if k in MODEL_PARAMS and isinstance(v, str) and v else _resolve_models(v, resolve))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_resolve_models(v, resolve) for v in value]
    return value


def reuse_key(stage: str, params: Mapping[str, Any], code: str | None = None,
              resolve: Callable[[str], str] = model_identity) -> str:
    """The key a finished result is reused by (see the module docstring). `code` overrides the code's identity and
    `resolve` the model identity (tests)."""
    blob = json.dumps({"stage": stage, "code": code or code_identity(), **_resolve_models(params, resolve)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def finished_run_with_tags(experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The newest FINISHED run of the experiment carrying all of `tags` (exact values), or None."""
    conditions = [f"tags.`{k}` = '{v}'" for k, v in tags.items()] + ["attributes.status = 'FINISHED'"]
    runs = MlflowClient().search_runs([experiment_id], " and ".join(conditions), max_results=1,
                                      order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def finished_run_with_key(experiment_id: str, key: str) -> str | None:
    """The newest FINISHED run of the experiment whose `reuse_key` tag is `key`."""
    return finished_run_with_tags(experiment_id, {REUSE_KEY_TAG: key})
