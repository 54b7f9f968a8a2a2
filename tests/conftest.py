"""Shared test set-up: no network, no ../shared, a throw-away tracking store, artifact root and data cache per
session. The session runs inside its temporary directory: a SQLite store puts artifacts under `./mlruns` of the
working directory where an experiment is created, so nothing a test logs can land in the checkout."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="prune-tracker-tests-"))
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["PRUNE_TRACKER_CACHE"] = str(_SESSION_DIR / "cache")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_DIR / 'mlflow.db'}"
os.environ.pop("MLFLOW_RUN_ID", None)
# Entry points run `python entrypoints/...`: the python of this environment must come first on PATH.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from conftest import ...` after the chdir
os.chdir(_SESSION_DIR)

from mlflow_server import mlflow_server  # noqa: E402,F401  (session-wide real server, started on demand)
from pg_server import team_server  # noqa: E402,F401  (PostgreSQL + basic-auth team server, started on demand)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# A tiny, fast, learnable training recipe on synthetic data, shared by the end-to-end tests.
SYNTHETIC_DATA = {"dataset": "synthetic", "train_subset": "1000", "val_size": "200", "split_seed": "0"}
QUICK_TRAIN = {**SYNTHETIC_DATA, "arch": "resnet20", "epochs": "3", "batch_size": "64", "lr": "0.1",
               "ema_decay": "0.9", "device": "cpu"}


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: on a shared CPU a second thread mostly waits (seconds per
    test). A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_mlflow_state(monkeypatch):
    """mlflow.set_experiment() stores the active experiment in a global and in MLFLOW_EXPERIMENT_ID (for
    subprocesses): reset both around every test so one test's experiment never leaks into the next."""
    import mlflow
    from mlflow.tracking import fluent

    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    fluent._active_experiment_id = None
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
    fluent._active_experiment_id = None


def pytest_sessionfinish(session, exitstatus) -> None:
    if not os.environ.get("PRUNE_TRACKER_KEEP_TEST_DIR"):
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)
