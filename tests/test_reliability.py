"""Reliability against a real tracking server: orphan runs and `prune-tracker gc`, a training process killed with
SIGKILL mid-epoch then resumed to the same weights, the server killed and restarted while a run logs, an unwritable
artifact destination, and 8 prune processes at once.

The shared server is the fixture `shared_server` below (one line to point it elsewhere); the fault tests that kill or
break a server start their own (`OwnServer`). Every process started here uses one torch thread."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow_server import _stop, _wait_healthy, free_port

from prune_tracker import jobs, tracking
from prune_tracker.cli import cli
from prune_tracker.core.models import architecture_spec, build_model
from prune_tracker.core.training import TrainConfig
from prune_tracker.tracking import gc, owner

pytestmark = pytest.mark.usefixtures("one_thread")

RESUME_DATA = ["--dataset", "synthetic", "--train-subset", "2000", "--val-size", "100", "--split-seed", "0"]
SWEEP_DATA = ["--dataset", "synthetic", "--train-subset", "300", "--val-size", "50", "--device", "cpu", "--no-progress",
              "--precisions", ""]
RESUME_TRAIN = ["train", "--arch", "resnet20", *RESUME_DATA, "--epochs", "3", "--batch-size", "64", "--lr", "0.1",
                "--ema-decay", "0.9", "--device", "cpu", "--no-progress", "--precisions", ""]


@pytest.fixture(scope="module")
def shared_server(team_server) -> tuple[str, dict[str, str]]:
    """(URI, credentials) of the server the e2e tests share: the team server (PostgreSQL, basic-auth) as its admin.
    `return mlflow_server, {}` (fixture `mlflow_server`) runs them against the SQLite-backed server instead."""
    return team_server.uri, {"MLFLOW_TRACKING_USERNAME": team_server.admin_user,
                             "MLFLOW_TRACKING_PASSWORD": team_server.admin_password}


@pytest.fixture
def on_server(shared_server, monkeypatch) -> Iterator[str]:
    """This process, the CLI invoked in it and the processes it starts talk to the shared server."""
    uri, credentials = shared_server
    for name, value in {"MLFLOW_TRACKING_URI": uri, **credentials}.items():
        monkeypatch.setenv(name, value)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(None)


def child_env(uri: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    return {**env, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true", **extra}


_started: list[subprocess.Popen] = []


# where the gc tests craft RUNNING / SCHEDULED runs on purpose
GC_EXPERIMENTS = ("gc-local", "gc-cli", "gc-resume", "gc-scheduled", "gc-sweep-killed")


@pytest.fixture(autouse=True)
def _no_crafted_run_left_running() -> Iterator[None]:
    """The runs the gc tests leave RUNNING on purpose (a live owner, a fresh heartbeat) are ended afterwards: other
    modules check that no run of the session's store is RUNNING."""
    yield
    client = MlflowClient()
    for name in GC_EXPERIMENTS:
        experiment = client.get_experiment_by_name(name)
        left = [run for status in ("RUNNING", "SCHEDULED") for run in client.search_runs(
            [experiment.experiment_id], f"attributes.status = '{status}'")] if experiment else []
        for run in left:
            client.set_terminated(run.info.run_id, "KILLED")


@pytest.fixture(autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """Every process a test started here is gone after it, even when the test failed half-way."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def start_cli(args: list[str], uri: str, log: Path, **extra_env: str) -> subprocess.Popen:
    """`python -m prune_tracker.cli ARGS` in its own process, stdout+stderr to `log`."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "prune_tracker.cli", *args], env=child_env(uri, **extra_env),
                                cwd=log.parent, stdout=out, stderr=subprocess.STDOUT)
    _started.append(proc)
    return proc


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{log.name}: still running after {timeout:.0f} s:\n{log.read_text()[-3000:]}") from None
    return log.read_text()


def run_id_in(output: str, stage: str) -> str:
    match = re.search(rf"{stage} run (\w+) finished", output)
    assert match, output[-3000:]
    return match.group(1)


def experiment_id(name: str, client: MlflowClient | None = None) -> str:
    client = client or MlflowClient()
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def iso_ago(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds))


# ---------------------------------------------------------------- owner tags, heartbeat, gc (local store, fast)


def test_a_run_records_its_owner_and_renews_its_heartbeat(monkeypatch):
    monkeypatch.setenv(owner.HEARTBEAT_ENV, "0.3")
    with tracking.tracked_run("train", "owners") as run:
        client, run_id = MlflowClient(), run.info.run_id
        tags = client.get_run(run_id).data.tags
        assert tags[owner.OWNER_PID] == str(os.getpid()) and tags[owner.OWNER_HOST] == socket.gethostname()
        assert tags[owner.OWNER_START] == owner.start_ticks(os.getpid()) != ""
        first = owner.parse_iso(tags[owner.HEARTBEAT])
        deadline = time.monotonic() + 10
        while owner.parse_iso(client.get_run(run_id).data.tags[owner.HEARTBEAT]) == first:
            assert time.monotonic() < deadline, "the heartbeat tag was never renewed"
            time.sleep(0.2)
        assert gc.find_orphans(["owners"], stale_after=1.0) == []  # a live owner on this host is never an orphan
    assert client.get_run(run_id).info.status == "FINISHED"


def _run_with(client: MlflowClient, experiment: str, name: str, tags: dict[str, str], start_ago: float = 0) -> str:
    run = client.create_run(experiment, start_time=int((time.time() - start_ago) * 1000),
                            tags={"mlflow.runName": name, **tags})
    return run.info.run_id


def _owner(pid: int, host: str | None = None, beat_ago: float = 0, ticks: str | None = None,
           pid_ns: str | None = None) -> dict[str, str]:
    return {owner.OWNER_HOST: host or socket.gethostname(), owner.OWNER_BOOT_ID: owner.boot_id(),
            owner.OWNER_PID_NS: owner.pid_namespace() if pid_ns is None else pid_ns,
            owner.OWNER_PID: str(pid), owner.OWNER_START: owner.start_ticks(pid) if ticks is None else ticks,
            owner.HEARTBEAT: iso_ago(beat_ago)}


def test_gc_marks_only_orphans_killed():
    client = MlflowClient()
    exp = experiment_id("gc-local", client)
    me = os.getpid()
    runs = {
        "dead owner here": _run_with(client, exp, "a", _owner(dead_pid())),
        "live owner, old heartbeat": _run_with(client, exp, "b", _owner(me, beat_ago=86400), start_ago=86400),
        "pid reused": _run_with(client, exp, "c", _owner(me, ticks="1")),
        "other host, fresh": _run_with(client, exp, "d", _owner(1, host="elsewhere.example", beat_ago=60)),
        "other host, silent": _run_with(client, exp, "e", _owner(1, host="elsewhere.example", beat_ago=3600),
                                        start_ago=7200),
        "no owner, old": _run_with(client, exp, "f", {}, start_ago=3600),
        "no owner, new": _run_with(client, exp, "g", {}),
        # The same host name, but another boot or another PID namespace (a container): its pids are not ours to
        # look up (a dead pid here says nothing), so only its heartbeat counts.
        "another boot, fresh": _run_with(client, exp, "h", _owner(dead_pid()) | {owner.OWNER_BOOT_ID: "another"}),
        "another PID namespace, fresh": _run_with(client, exp, "j", _owner(dead_pid(), pid_ns="pid:[1]")),
        "another PID namespace, silent": _run_with(client, exp, "k", _owner(dead_pid(), pid_ns="pid:[1]",
                                                                             beat_ago=3600), start_ago=7200),
    }
    finished = _run_with(client, exp, "i", _owner(dead_pid()))
    client.set_terminated(finished, "FINISHED")
    orphans = {"dead owner here", "pid reused", "other host, silent", "no owner, old", "another PID namespace, silent"}

    preview = gc.mark_orphans_killed(["gc-local"], stale_after="15m", dry_run=True)
    assert {o.run_id for o in preview} == {runs[k] for k in orphans}
    assert all(client.get_run(r).info.status == "RUNNING" for r in runs.values())  # a dry run marks nothing

    assert {o.run_id for o in gc.mark_orphans_killed(["gc-local"], stale_after=None)} == {
        runs[k] for k in ("dead owner here", "pid reused")}  # off: only runs whose owner this process sees
    marked = {o.run_id: o.reason for o in gc.mark_orphans_killed(["gc-local"], stale_after="15m")}
    assert set(marked) == {runs[k] for k in ("other host, silent", "no owner, old", "another PID namespace, silent")}
    for key, run_id in runs.items():
        run = client.get_run(run_id)
        assert run.info.status == ("KILLED" if key in orphans else "RUNNING"), key
        assert (gc.GC_REASON_TAG in run.data.tags) == (key in orphans), key
    assert client.get_run(finished).info.status == "FINISHED"
    assert "is gone" in client.get_run(runs["dead owner here"]).data.tags[gc.GC_REASON_TAG]
    assert "another process" in client.get_run(runs["pid reused"]).data.tags[gc.GC_REASON_TAG]
    assert "no heartbeat for 1h00m" in client.get_run(runs["another PID namespace, silent"]).data.tags[gc.GC_REASON_TAG]
    silent = client.get_run(runs["other host, silent"])
    assert "no heartbeat for 1h00m" in silent.data.tags[gc.GC_REASON_TAG]
    assert abs(silent.info.end_time / 1000 - (time.time() - 3600)) < 120  # ended at its last heartbeat
    assert gc.mark_orphans_killed(["gc-local"]) == []  # nothing left to mark


def test_gc_command_prints_what_it_marked_and_rejects_bad_input():
    assert {p.name: p.default for p in cli.commands["gc"].params}["stale_after"] == gc.DEFAULT_STALE_AFTER
    client = MlflowClient()
    run_id = _run_with(client, experiment_id("gc-cli", client), "orphan", _owner(dead_pid()))
    dry = CliRunner().invoke(cli, ["gc", "--experiment-names", "gc-cli", "--dry-run"])
    assert dry.exit_code == 0 and run_id in dry.output and "1 orphan run(s) found" in dry.output, dry.output
    assert client.get_run(run_id).info.status == "RUNNING"
    done = CliRunner().invoke(cli, ["gc", "--experiment_names", "gc-cli", "--stale-after", "off"])
    assert done.exit_code == 0 and f"marked KILLED: {run_id} gc-cli/orphan: owner process" in done.output
    assert client.get_run(run_id).info.status == "KILLED"
    for args, bad in ((["--stale-after", "soon"], "stale_after='soon'"), (["--stale-after", "0"], "stale_after='0'"),
                      (["--stale-after", "1s"], "stale_after='1s' is shorter than 3 heartbeat intervals (3 x 60s ="),
                      (["--experiment-names", "no-such-experiment"], "'no-such-experiment' not found")):
        result = CliRunner().invoke(cli, ["gc", *args])
        assert result.exit_code == 2 and bad in result.output and len(result.output.strip().splitlines()) == 1


def test_stale_after_must_span_three_heartbeats(monkeypatch):
    assert gc.stale_after_seconds("15m") == 900  # the default against the default 60 s heartbeat
    with pytest.raises(ValueError, match=r"stale_after='2m' is shorter than 3 heartbeat intervals \(3 x 60s = 3m00s"):
        gc.stale_after_seconds("2m")
    monkeypatch.setenv(owner.HEARTBEAT_ENV, "0.3")
    assert gc.stale_after_seconds("1s") == 1.0  # a team beating every 0.3 s may judge after 1 s
    monkeypatch.setenv(owner.HEARTBEAT_ENV, "600")
    with pytest.raises(ValueError, match="shorter than 3 heartbeat intervals"):
        gc.stale_after_seconds("15m")
    assert gc.default_stale_after() == 1800  # what the sweep and a resume judge by: never shorter than 3 beats


def _scheduled(client: MlflowClient, experiment: str, name: str, tags: dict[str, str], parent: str | None = None,
               start_ago: float = 0) -> str:
    """A run in status SCHEDULED, as a study creates its trials' runs (nested under `parent`)."""
    run_id = _run_with(client, experiment, name, tags | ({MLFLOW_PARENT_RUN_ID: parent} if parent else {}),
                       start_ago=start_ago)
    client.update_run(run_id, status="SCHEDULED")
    return run_id


def test_gc_collects_scheduled_runs_nobody_will_start():
    client = MlflowClient()
    exp = experiment_id("gc-scheduled", client)
    me, gone, elsewhere = os.getpid(), dead_pid(), "elsewhere.example"
    live_study = _run_with(client, exp, "live study", _owner(1, host=elsewhere, beat_ago=30))
    silent_study = _run_with(client, exp, "silent study", _owner(1, host=elsewhere, beat_ago=3600), start_ago=7200)
    ended_study = _run_with(client, exp, "ended study", _owner(1, host=elsewhere))
    client.set_terminated(ended_study, "FINISHED")
    runs = {
        "its process gone": _scheduled(client, exp, "a", _owner(gone), parent=live_study),
        "its process alive": _scheduled(client, exp, "b", _owner(me), parent=ended_study),
        "study alive elsewhere": _scheduled(client, exp, "c", _owner(1, host=elsewhere), parent=live_study),
        "study ended": _scheduled(client, exp, "d", _owner(1, host=elsewhere), parent=ended_study),
        "study silent": _scheduled(client, exp, "e", _owner(1, host=elsewhere), parent=silent_study),
        "no study, old": _scheduled(client, exp, "f", {}, start_ago=3600),
        "no study, new": _scheduled(client, exp, "g", {}),
    }
    orphans = {"its process gone", "study ended", "study silent", "no study, old"}
    preview = gc.mark_orphans_killed(["gc-scheduled"], dry_run=True)
    assert {o.run_id for o in preview if o.status == "SCHEDULED"} == {runs[k] for k in orphans}
    assert [o.run_id for o in preview if o.status == "RUNNING"] == [silent_study]
    gc.mark_orphans_killed(["gc-scheduled"])
    for key, run_id in runs.items():
        run = client.get_run(run_id)
        assert run.info.status == ("KILLED" if key in orphans else "SCHEDULED"), key
    reasons = {k: client.get_run(runs[k]).data.tags.get(gc.GC_REASON_TAG, "") for k in orphans}
    assert reasons["its process gone"] == f"never started: owner process {gone} on host {socket.gethostname()} is gone"
    assert reasons["study ended"] == f"never started, and its study run {ended_study} ended FINISHED"
    assert reasons["study silent"] == f"never started, and its study run {silent_study} is an orphan"
    assert client.get_run(live_study).info.status == "RUNNING"


SLEEPER = """
import sys, time
from prune_tracker import tracking
with tracking.tracked_run("train", sys.argv[1], run_name="live neighbour") as run:
    print("run", run.info.run_id, flush=True)
    time.sleep(600)
"""


def _wait_for_runs(client: MlflowClient, experiment: str, filter_string: str, count: int, proc: subprocess.Popen,
                   log: Path, timeout: float = 240) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], filter_string) if exp else []
        if len(runs) >= count:
            return runs
        time.sleep(0.2)
    raise AssertionError(f"{count} runs matching {filter_string!r} not within {timeout:.0f} s:\n{log.read_text()}")


@pytest.mark.e2e
def test_a_sweep_driver_killed_after_scheduling_leaves_nothing_for_gc_to_miss(tmp_path):
    """kill -9 of the sweep's process once its three trial runs exist (one RUNNING in it, two SCHEDULED): `gc`
    leaves no run RUNNING or SCHEDULED, and the live run of another process on this host is untouched."""
    experiment, client = "gc-sweep-killed", MlflowClient()
    uri = mlflow.get_tracking_uri()
    base = jobs.train(jobs.TrainSpec("resnet8", jobs.DataSpec("synthetic", None, 300, 50, 0),
                                     TrainConfig(epochs=0.2, batch_size=64, lr=0.1),
                                     jobs.RunSpec(experiment, "cpu", progress=False, precisions=())))
    neighbour_log, driver_log = tmp_path / "neighbour.log", tmp_path / "sweep.log"
    with open(neighbour_log, "wb") as out:
        neighbour = subprocess.Popen([sys.executable, "-c", SLEEPER, experiment], env=child_env(uri), cwd=tmp_path,
                                     stdout=out, stderr=subprocess.STDOUT)
    _started.append(neighbour)
    live = _wait_for_runs(client, experiment, "tags.mlflow.runName = 'live neighbour'", 1, neighbour, neighbour_log)
    driver = start_cli(["sweep", "--model-uri", f"runs:/{base}/model", "--methods", "global_l1", "--ratios",
                        "0.3,0.5,0.7", "--finetune-epochs", "1", "--experiment-name", experiment, *SWEEP_DATA], uri,
                       driver_log)
    trials = _wait_for_runs(client, experiment, "tags.sweep_run_id != ''", 3, driver, driver_log)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    assert "SCHEDULED" in [client.get_run(t.info.run_id).info.status for t in trials]  # trials never started

    result = CliRunner().invoke(cli, ["gc", "--experiment-names", experiment])
    assert result.exit_code == 0, result.output
    exp = client.get_experiment_by_name(experiment).experiment_id
    left = {r.info.run_id: r.info.status for r in client.search_runs([exp])
            if r.info.status in ("RUNNING", "SCHEDULED")}
    assert left == {live[0].info.run_id: "RUNNING"}, result.output  # only the live neighbour
    assert all(client.get_run(t.info.run_id).info.status == "KILLED" for t in trials), result.output
    print(f"gc after the killed sweep driver:\n{result.output}")


def test_resume_refuses_a_run_that_a_live_process_owns():
    client = MlflowClient()
    run_id = _run_with(client, experiment_id("gc-resume", client), "live", _owner(os.getpid()))
    with pytest.raises(ValueError, match="is still RUNNING"), tracking.tracked_run("train", None,
                                                                                   resume_run_id=run_id):
        pass
    assert client.get_run(run_id).info.status == "RUNNING"


def _model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    path = tmp_path / "model.pt"
    torch.save({"spec": architecture_spec(model, "resnet20", 10), "state_dict": model.state_dict()}, path)
    return path


PRUNE_FILE = ["--method", "global_l1", "--ratio", "0.5", "--dataset", "synthetic", "--train-subset", "300",
              "--val-size", "50", "--device", "cpu", "--no-progress", "--precisions", ""]


def test_unwritable_local_artifact_root_fails_the_run_with_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    MlflowClient().create_experiment("unwritable-local", artifact_location=str(blocker / "artifacts"))
    result = CliRunner().invoke(cli, ["prune", "--model-uri", str(_model_file(tmp_path)), *PRUNE_FILE,
                                      "--experiment-name", "unwritable-local"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot write artifact "), result.output
    assert "Not a directory" in lines[0] and str(blocker) in lines[0]
    exp = MlflowClient().get_experiment_by_name("unwritable-local").experiment_id
    runs = MlflowClient().search_runs([exp])
    assert [r.info.status for r in runs] == ["FAILED"]


# ---------------------------------------------------------------- servers of our own, killed and broken


class OwnServer:
    """`mlflow server` (SQLite store, served artifacts) on a fixed port: killable with SIGKILL and restartable
    on the same port and store."""

    def __init__(self, root: Path, artifacts: Path):
        self.root, self.artifacts, self.port = root, artifacts, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self) -> OwnServer:
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        log = self.root / "server.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        _wait_healthy(self.uri, self.proc, log, 90)
        return self

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@pytest.fixture(scope="module")
def own_server(tmp_path_factory) -> Iterator[OwnServer]:
    """A server for the fault tests. Its artifact destination lies under a regular file, so no artifact can be
    written there (the unwritable-destination test); the restart test logs metrics only."""
    root = tmp_path_factory.mktemp("own-server")
    (root / "a-file").write_text("not a directory")
    server = OwnServer(root, root / "a-file" / "artifacts").start()
    try:
        yield server
    finally:
        server.stop()


LOGGER = """
import sys, time
from prune_tracker import tracking
with tracking.tracked_run("train", "restart", run_name="logger") as run:
    print("run", run.info.run_id, flush=True)
    for step in range(int(sys.argv[1])):
        tracking.log_metrics({"x": step * 0.5, "y": -step}, step=step)
        print("step", step, time.monotonic(), flush=True)
        time.sleep(0.1)
"""


@pytest.mark.e2e
def test_server_killed_and_restarted_while_a_run_logs(own_server, tmp_path):
    steps, log = 60, tmp_path / "logger.log"
    with open(log, "wb") as out:
        client_proc = subprocess.Popen([sys.executable, "-c", LOGGER, str(steps)], env=child_env(own_server.uri),
                                       cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    _started.append(client_proc)
    deadline = time.monotonic() + 120
    while "step 10 " not in log.read_text():
        assert client_proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    own_server.kill()  # the whole process group, mid-logging
    killed_at = log.read_text().count("step ")
    time.sleep(2)
    own_server.start()  # same port, same store
    assert client_proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    assert killed_at < steps, "the run had finished before the server was killed"
    stamps = [float(t) for t in re.findall(r"step \d+ (\S+)", log.read_text())]
    blocked = max(b - a for a, b in pairwise(stamps))
    assert blocked > 2, "the client never waited for the server"
    print(f"server killed at step {killed_at}: the client waited {blocked:.1f} s, then went on")
    run_id = re.search(r"run (\w+)", log.read_text()).group(1)
    client = MlflowClient(own_server.uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    for key, value in (("x", lambda s: s * 0.5), ("y", lambda s: -s)):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(s, value(s)) for s in range(steps)], key  # every step once: none lost, none doubled


@pytest.mark.e2e
def test_unwritable_artifact_destination_on_the_server_fails_the_run(own_server, tmp_path):
    log = tmp_path / "prune.log"
    proc = start_cli(["prune", "--model-uri", str(_model_file(tmp_path)), *PRUNE_FILE, "--experiment-name",
                      "unwritable-server"], own_server.uri, log, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
    output = finish(proc, log, timeout=240)
    assert proc.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert errors[0].startswith("Error: cannot write artifact ") and "--artifacts-destination" in errors[0], errors[0]
    client = MlflowClient(own_server.uri)
    exp = client.get_experiment_by_name("unwritable-server").experiment_id
    assert [r.info.status for r in client.search_runs([exp])] == ["FAILED"]


# ---------------------------------------------------------------- SIGKILL mid-epoch -> gc -> resume


def _wait_for_checkpoint(client: MlflowClient, experiment: str, run_name: str, proc: subprocess.Popen,
                         log: Path) -> str:
    """The id of run `run_name` once its first epoch checkpoint is logged."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{run_name}'") if exp else []
        if runs and client.list_artifacts(runs[0].info.run_id, "checkpoint"):
            return runs[0].info.run_id
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of {run_name} within 240 s:\n{log.read_text()[-3000:]}")


@pytest.mark.e2e
def test_sigkill_mid_epoch_then_gc_then_resume_reaches_the_same_weights(on_server, tmp_path):
    experiment, client = "reliability-resume", MlflowClient()
    common = [*RESUME_TRAIN, "--experiment-name", experiment]
    straight_log, victim_log = tmp_path / "straight.log", tmp_path / "victim.log"
    straight = start_cli([*common, "--run-name", "straight"], on_server, straight_log)
    victim = start_cli([*common, "--run-name", "victim"], on_server, victim_log)
    run_id = _wait_for_checkpoint(client, experiment, "victim", victim, victim_log)
    victim.send_signal(signal.SIGKILL)  # during epoch 2 (epoch 1's checkpoint is logged)
    victim.wait(timeout=30)
    killed = client.get_run(run_id)
    assert killed.info.status == "RUNNING"  # nothing ended it: an orphan
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1], "killed after epoch 2 ended"

    marked = CliRunner().invoke(cli, ["gc", "--experiment-names", experiment])
    assert marked.exit_code == 0 and f"marked KILLED: {run_id}" in marked.output, marked.output
    assert client.get_run(run_id).info.status == "KILLED"
    assert f"owner process {victim.pid}" in client.get_run(run_id).data.tags[gc.GC_REASON_TAG]
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    [live] = client.search_runs([exp_id], "attributes.run_name = 'straight'")
    assert live.info.run_id not in marked.output and live.info.status != "KILLED", "gc ended the live run beside it"

    resumed_log = tmp_path / "resumed.log"
    resumed = start_cli([*common, "--resume-run-id", run_id], on_server, resumed_log)
    assert run_id_in(finish(resumed, resumed_log), "train") == run_id  # the same MLflow run continues
    straight_id = run_id_in(finish(straight, straight_log), "train")
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).data.tags[owner.OWNER_PID] == str(resumed.pid)
    a = tracking.load_model(f"runs:/{straight_id}/model").model.state_dict()
    b = tracking.load_model(f"runs:/{run_id}/model").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("train_loss", "epoch_val_accuracy"):
        ours = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        theirs = [(m.step, m.value) for m in client.get_metric_history(straight_id, key)]
        assert sorted(ours) == sorted(theirs), key  # epoch 1 from the killed process, 2-3 from the resumed one


# ---------------------------------------------------------------- load: 8 prune processes at once

LOAD_PRUNE = ["prune", "--method", "global_l1", "--dataset", "synthetic", "--device", "cpu", "--no-progress",
              "--no-tta-flip", "--precisions", "fp16", "--experiment-name", "reliability-load"]
LOAD_RATIOS = ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8")
VARYING = ("seconds", "latency", "_ms")  # timings: the only metrics that may differ between identical runs


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def _logged_model_names(run_id: str) -> set[str]:
    exp = MlflowClient().get_run(run_id).info.experiment_id
    models = mlflow.search_logged_models(experiment_ids=[exp], filter_string=f"source_run_id = '{run_id}'",
                                         output_format="list")
    return {m.name for m in models}


@pytest.mark.e2e
def test_eight_prune_runs_at_once_all_finish_complete(on_server, tmp_path):
    from prune_tracker.analysis.compare import run_compare

    base = jobs.train(jobs.TrainSpec("resnet20", jobs.DataSpec("synthetic", None, 600, 100, 0),
                                     TrainConfig(epochs=1, batch_size=64, lr=0.1),
                                     jobs.RunSpec("reliability-load", "cpu", False, precisions=())))
    prune = [*LOAD_PRUNE, "--model-uri", f"runs:/{base}/model"]
    alone_log, started = tmp_path / "alone.log", time.monotonic()
    alone = run_id_in(finish(start_cli([*prune, "--ratio", "0.5"], on_server, alone_log), alone_log), "prune")
    alone_seconds = time.monotonic() - started

    started = time.monotonic()
    procs = {r: start_cli([*prune, "--ratio", r], on_server, tmp_path / f"prune-{r}.log") for r in LOAD_RATIOS}
    outputs = {r: finish(p, tmp_path / f"prune-{r}.log") for r, p in procs.items()}
    fan_out_seconds = time.monotonic() - started
    assert all(p.returncode == 0 for p in procs.values()), {r: o[-2000:] for r, o in outputs.items() if "Error" in o}
    run_ids = {r: run_id_in(o, "prune") for r, o in outputs.items()}
    assert len(set(run_ids.values())) == len(LOAD_RATIOS)

    client = MlflowClient()
    reference = client.get_run(alone)
    ref_artifacts, ref_models = _artifact_paths(client, alone), _logged_model_names(alone)
    for ratio, run_id in run_ids.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", ratio
        assert run.data.params.keys() == reference.data.params.keys(), ratio
        assert run.data.metrics.keys() == reference.data.metrics.keys(), ratio
        assert run.data.params["ratio"] == ratio
        assert _artifact_paths(client, run_id) == ref_artifacts, ratio
        assert _logged_model_names(run_id) == ref_models, ratio
    same = client.get_run(run_ids["0.5"]).data.metrics  # the same command as the lone run: the same numbers
    assert {k: v for k, v in same.items() if not any(t in k for t in VARYING)} == {
        k: v for k, v in reference.data.metrics.items() if not any(t in k for t in VARYING)}
    print(f"one prune process alone: {alone_seconds:.1f} s; 8 at once: {fan_out_seconds:.1f} s")

    result = run_compare(["reliability-load"], dataset="synthetic", register=True, registered_name="load-model")
    registered = set(result.registration.versions.values())
    versions = client.search_model_versions("name='load-model'")
    assert registered and len(versions) == len(registered) == len(result.front)
    run_compare(["reliability-load"], dataset="synthetic", register=True, registered_name="load-model")
    assert len(client.search_model_versions("name='load-model'")) == len(versions)  # no duplicates on a rerun
