"""A real ``mlflow server`` for tests: SQLite backend + served artifacts in a temp dir, 127.0.0.1, free port.

Use from ``tests/conftest.py`` (tests/ is on sys.path under pytest's default import mode)::

    from mlflow_server import mlflow_server  # noqa: F401

Test modules may import it the same way: the server process is shared (reference counted) by every
fixture instance in the pytest process, so importing it in conftest and in a module still starts one.
Outside pytest, ``running_mlflow_server(tmp_dir)`` is a plain context manager yielding the URI.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

HEALTH_TIMEOUT_S = 60.0
_shared: dict[str, object] = {"uri": None, "users": 0, "cm": None}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
            return resp.status == 200 and resp.read().strip() == b"OK"
    except OSError:
        return False


def _wait_healthy(uri: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if _healthy(uri):
            return
        time.sleep(0.25)
    raise RuntimeError(
        f"mlflow server at {uri} not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}"
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


@contextmanager
def running_mlflow_server(root: Path, timeout: float = HEALTH_TIMEOUT_S) -> Iterator[str]:
    """Start ``mlflow server`` (own process group) under ``root``; yield ``http://127.0.0.1:<port>``."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = root / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        _wait_healthy(uri, proc, log, timeout)
        yield uri
    finally:
        _stop(proc)


def _acquire(root: Path) -> str:
    if _shared["uri"] is None:
        cm = running_mlflow_server(root)
        _shared["uri"] = cm.__enter__()
        _shared["cm"] = cm
    _shared["users"] = int(_shared["users"]) + 1  # type: ignore[call-overload]
    return str(_shared["uri"])


def _release() -> None:
    _shared["users"] = int(_shared["users"]) - 1  # type: ignore[call-overload]
    if _shared["users"] == 0 and _shared["cm"] is not None:
        cm, _shared["cm"], _shared["uri"] = _shared["cm"], None, None
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]


@pytest.fixture(scope="session", name="mlflow_server")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Session-scoped server URI ``http://127.0.0.1:<port>``; SIGTERMs its process group at the end.

    It does not change ``MLFLOW_TRACKING_URI``: tests point at it with ``mlflow.set_tracking_uri(uri)``
    or ``monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)``.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = _acquire(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield uri
    finally:
        _release()
