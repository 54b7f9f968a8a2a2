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
# Nothing is written to the user's home: matplotlib's and Ray's caches, Ray's session files and usage stats stay in
# the session directory (HOME itself points there, for any library that writes under ~).
os.environ["HOME"] = str(_SESSION_DIR / "home")
os.environ["MPLCONFIGDIR"] = str(_SESSION_DIR / "matplotlib")
os.environ["RAY_TMPDIR"] = str(_SESSION_DIR / "ray")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# One intra-op thread per process: pytest-xdist runs two workers on two cores, and child processes (`mlflow run`,
# the CLI, servers) inherit this; a second thread per process would only wait.
for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_threads] = "1"
# A few hundred synthetic test images instead of 1,000 (prune runs evaluate the test split several times).
os.environ["PRUNE_TRACKER_SYNTHETIC_TEST"] = "400"
for _dir in ("home", "matplotlib", "ray"):
    (_SESSION_DIR / _dir).mkdir()
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from conftest import ...` after the chdir

import interrupts  # noqa: E402
from mlflow_server import mlflow_server  # noqa: E402,F401  (session-wide real server, started on demand)
from pg_server import team_server  # noqa: E402,F401  (PostgreSQL + basic-auth team server, started on demand)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# A tiny, fast, learnable training recipe on synthetic data, shared by the end-to-end tests.
SYNTHETIC_DATA = {"dataset": "synthetic", "train_subset": "1000", "val_size": "200", "split_seed": "0"}
QUICK_TRAIN = {**SYNTHETIC_DATA, "arch": "resnet20", "epochs": "3", "batch_size": "64", "lr": "0.1",
               "ema_decay": "0.9", "device": "cpu"}


def require(module: str, extra: str):
    """Import an optional dependency that `make test` installs; missing, the test fails in one line saying what to
    install (never a silent skip)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is not installed: pip install -e '.[{extra}]' (make test installs the {extra} extra)",
                    pytrace=False)


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


def pytest_configure(config) -> None:
    """Tests run inside the session directory. Not pytest-xdist's controller: its workers start in its working
    directory and must find the test paths there (each worker is a session of its own, with its own directory;
    `--dist loadfile` keeps a module's tests on one worker, so module fixtures are built once)."""
    if not config.getoption("numprocesses", None) or hasattr(config, "workerinput"):
        os.chdir(_SESSION_DIR)
    interrupts.install()  # SIGTERM tears the fixtures down as Ctrl-C does (servers stopped)


_MODULE_SECONDS: dict[str, float] = {}
_MODULE_TESTS: dict[str, int] = {}


def pytest_runtest_logreport(report) -> None:
    """Seconds per test module (setup + call + teardown), gathered where the reports arrive (xdist: the controller)."""
    module = report.nodeid.split("::")[0]
    _MODULE_SECONDS[module] = _MODULE_SECONDS.get(module, 0.0) + report.duration
    if report.when == "call":
        _MODULE_TESTS[module] = _MODULE_TESTS.get(module, 0) + 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The per-module durations, printed and saved as a markdown table beside the session's temporary directory
    (docs/development.md reads such a table)."""
    if hasattr(config, "workerinput") or not _MODULE_SECONDS:
        return
    import platform

    cpu = "AVX512_BF16" if "avx512_bf16" in Path("/proc/cpuinfo").read_text() else "AVX2 or older"
    if os.environ.get("ATEN_CPU_CAPABILITY") == "avx2":  # how an AVX2-only machine is emulated on an AVX512 one
        cpu += f" with AVX2 kernels forced (ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '-')})"
    lines = ["| module | tests | seconds (summed over workers) |", "|---|---:|---:|"]
    for module, seconds in sorted(_MODULE_SECONDS.items(), key=lambda kv: -kv[1]):
        lines.append(f"| `{module}` | {_MODULE_TESTS.get(module, 0)} | {seconds:.1f} |")
    table = "\n".join(lines)
    out = Path(tempfile.gettempdir()) / "prune-tracker-test-durations.md"
    out.write_text(f"{os.cpu_count()} CPUs ({cpu}, {platform.processor() or platform.machine()})\n\n{table}\n")
    terminalreporter.write_sep("=", f"seconds per module (saved in {out})")
    terminalreporter.write_line(table)


def pytest_sessionfinish(session, exitstatus) -> None:
    if not os.environ.get("PRUNE_TRACKER_KEEP_TEST_DIR"):
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)
