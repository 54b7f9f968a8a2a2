"""One identity for reuse (tracking/identity.py): the code by its own source files (and its own checkout's commit,
never the HEAD of a repository it merely sits in), every model by what it names now and by content, the data and
every parameter. Editing one method file or moving an alias makes a finished trial no longer reusable."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from prune_tracker import tracking
from prune_tracker.core.models import build_model
from prune_tracker.studies import sweep
from prune_tracker.studies.sweep import PruneBase, TrialOutcome, TrialRunner, TrialSpec
from prune_tracker.tracking import identity

EXPERIMENT = "reuse-identity"
METHOD_FILE = Path("core") / "pruning" / "lamp.py"
CODE_IDENTITY = identity.code_identity  # the real one (a test replaces the module's)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def _copy_package(destination: Path) -> Path:
    """The installed package's own source files (what identity hashes), copied to `destination`."""
    shutil.copytree(identity.PACKAGE_DIR, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def _edit(package: Path) -> None:
    with open(package / METHOD_FILE, "a") as out:
        out.write("\n# an edit\n")
    CODE_IDENTITY.cache_clear()


def test_the_code_identity_is_the_packages_own(tmp_path):
    own = _copy_package(tmp_path / "checkout" / "prune_tracker")
    _git(own.parent, "init", "-q")
    _git(own.parent, "add", ".")
    _git(own.parent, "commit", "-qm", "x")
    commit = _git(own.parent, "rev-parse", "HEAD")
    first = identity.code_identity(own)
    assert first == f"git:{commit}+src:{identity.source_hash(own)}"  # its own checkout: commit and sources
    _edit(own)  # uncommitted: the commit alone would not tell
    assert identity.code_identity(own) != first

    project = tmp_path / "project"  # a repository the package merely sits in (a virtualenv inside it)
    installed = _copy_package(project / "venv" / "site-packages" / "prune_tracker")
    (project / ".gitignore").write_text("venv/\n")
    _git(project, "init", "-q")
    _git(project, "add", ".")
    _git(project, "commit", "-qm", "project")
    before = identity.code_identity(installed)
    assert before == f"src:{identity.source_hash(installed)}"  # not the project's HEAD
    (project / "notes.txt").write_text("unrelated\n")
    _git(project, "add", ".")
    _git(project, "commit", "-qm", "unrelated")
    identity.code_identity.cache_clear()
    assert identity.code_identity(installed) == before  # the project moved on, the package did not
    _edit(installed)  # an ignored path to the project's git, still the package's code
    assert identity.code_identity(installed) != before


# ---------------------------------------------------------------- reuse of a trial


class FinishingExecutor(sweep.LocalExecutor):
    """Runs no prune job: each trial reopens its run and ends it FINISHED, as a trial that pruned would."""

    def __init__(self) -> None:
        super().__init__()
        self.ran: list[int] = []

    def next_outcome(self) -> TrialOutcome:
        task = self._queue.popleft()
        with tracking.tracked_run("prune", None, nested=True, resume_run_id=task.run_id):
            self.ran.append(task.index)
        return TrialOutcome(task.index, True, task.run_id)


def _trial(base_uri: str, spec: TrialSpec) -> tuple[bool, str]:
    """(reused, key) of one trial of a new study over `base_uri`."""
    executor = FinishingExecutor()
    with mlflow.start_run(experiment_id=MlflowClient().get_experiment_by_name(EXPERIMENT).experiment_id) as study:
        runner = TrialRunner(PruneBase(base_uri, precisions=()), executor, study.info.experiment_id,
                             study.info.run_id, "sweep", log=lambda _line: None)
        runner.add(1, spec)
        runner.drain()
        runner.close()
    result = runner.ordered()[0]
    assert result.status == "FINISHED" and result.reused == (executor.ran == [])
    return result.reused, result.key


def _model_run(name: str) -> str:
    with tracking.tracked_run("train", EXPERIMENT, name) as run:
        tracking.log_model(build_model("resnet8", 10), "resnet8", 10)
    return run.info.run_id


@pytest.fixture(scope="module")
def models() -> dict[str, str]:
    """Two logged models (runs a, b) and a registered name with version 1 -> a, 2 -> b, 3 -> a again."""
    runs = {"a": _model_run("model a"), "b": _model_run("model b")}
    client = MlflowClient()
    for run in ("a", "b", "a"):
        mlflow.register_model(f"runs:/{runs[run]}/model", "reuse-alias")
    client.set_registered_model_alias("reuse-alias", "champion", "1")
    return runs


def test_editing_one_method_file_invalidates_reuse(models, tmp_path, monkeypatch):
    package = _copy_package(tmp_path / "prune_tracker")
    monkeypatch.setattr(identity, "code_identity", lambda: CODE_IDENTITY(package))
    base, spec = f"runs:/{models['a']}/model", TrialSpec("lamp", 0.5)
    assert _trial(base, spec)[0] is False
    assert _trial(base, spec)[0] is True  # the same code, model and parameters: reused
    _edit(package)
    assert _trial(base, spec)[0] is False, "a finished trial of other code was reused"


def test_moving_an_alias_invalidates_reuse(models):
    client, alias = MlflowClient(), "models:/reuse-alias@champion"
    spec = TrialSpec("lamp", 0.5, seed=7)
    first = _trial(alias, spec)
    assert first[0] is False and _trial(alias, spec) == (True, first[1])
    client.set_registered_model_alias("reuse-alias", "champion", "2")  # now names model b
    moved = _trial(alias, spec)
    assert moved[0] is False and moved[1] != first[1], "a trial of the model the alias named before was reused"
    client.set_registered_model_alias("reuse-alias", "champion", "3")  # model a again, as another version
    assert _trial(alias, spec) == (True, first[1])  # the same model files: reused, whatever the version number


def test_a_teacher_alias_and_a_main_step_model_are_resolved_too(models):
    client, alias = MlflowClient(), "models:/reuse-alias@champion"
    client.set_registered_model_alias("reuse-alias", "champion", "1")
    with_teacher = TrialSpec("lamp", 0.5, overrides={"distill_alpha": 0.5, "teacher_uri": alias})
    runner = TrialRunner(PruneBase(f"runs:/{models['a']}/model", precisions=()), sweep.LocalExecutor(), "0", "",
                         "sweep")
    trial_key, step_key = runner.key(with_teacher), identity.reuse_key("evaluate", {"model_uri": alias})
    client.set_registered_model_alias("reuse-alias", "champion", "2")
    assert runner.key(with_teacher) != trial_key
    assert identity.reuse_key("evaluate", {"model_uri": alias}) != step_key
    assert identity.model_identity(alias).startswith(f"run:{models['b']}/model@sha256:")
