"""An interrupted test run stops what it started: a pytest run holding the session's mlflow server (the fixture the
server tests share) is sent SIGINT (Ctrl-C) or SIGTERM (a CI timeout, `kill`); it exits, and the server's port is
closed and its process gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow_server import _healthy

TESTS_DIR = Path(__file__).resolve().parent
HOLDING_TEST = '''
import os
import time


def test_hold(mlflow_server):
    open(os.environ["HOLD_FILE"], "w").write(mlflow_server)
    time.sleep(600)
'''


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.5)
    raise AssertionError(f"the server did not start within {timeout:.0f} s")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_an_interrupted_run_stops_its_server(tmp_path, sig):
    (tmp_path / "test_hold.py").write_text(HOLDING_TEST)
    hold_file = tmp_path / "uri"
    env = {**os.environ, "HOLD_FILE": str(hold_file),
           "PYTHONPATH": os.pathsep.join(filter(None, (str(TESTS_DIR), os.environ.get("PYTHONPATH"))))}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                             "-p", "interrupts", "-p", "mlflow_server", "--rootdir", str(tmp_path),
                             str(tmp_path / "test_hold.py")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        uri = _wait_for(hold_file, proc, timeout=120)
        assert _healthy(uri)
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and "KeyboardInterrupt" in output, output[-2000:]
    assert not _healthy(uri), "the server outlived the interrupted run"
