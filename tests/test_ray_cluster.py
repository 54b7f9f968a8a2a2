"""A sweep on a two-node Ray cluster started here (`ray start --head` and a second `ray start --address`, one CPU
each, on 127.0.0.1): its two trials run one on each node; the worker node is killed (SIGKILL of its processes) while
its trial runs; Ray reports the node dead, the sweep ends that attempt's run KILLED and retries the trial on the
head, where it finishes in the same run. The sweep's compare lists both trials; nothing is left RUNNING or
SCHEDULED."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, require
from mlflow.tracking import MlflowClient

from prune_tracker.core.training import TrainConfig
from prune_tracker.jobs import DataSpec, RunSpec, TrainSpec, train
from prune_tracker.studies.executors import RAY_NODE_TAG
from prune_tracker.studies.sweep import FINISHED, PruneBase, SweepConfig, run_sweep
from prune_tracker.tracking.server import free_port

ray = require("ray", "ray")
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_thread")]
EXPERIMENT = "ray-two-nodes"
RAY = str(Path(sys.executable).parent / "ray")


def _node(args: list[str], temp_dir: Path, log: Path) -> subprocess.Popen:
    """`ray start ... --block` in its own process group (one CPU, no usage stats, this checkout importable)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    cmd = [RAY, "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats",
           "--block", "--temp-dir", str(temp_dir), "--object-store-memory", str(100 * 2**20)]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(node: subprocess.Popen, grace: float = 10) -> None:
    with suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        node.wait(timeout=grace)
    with suppress(ProcessLookupError):  # what outlived the grace period (gcs_server, raylet, agents)
        os.killpg(node.pid, signal.SIGKILL)
    node.wait(timeout=30)


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(Exception):  # not up yet
            found = predicate()
            if found:
                return found
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout:.0f} s")


@dataclass
class Cluster:
    address: str
    head_id: str
    worker_id: str
    worker: subprocess.Popen


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit 107 characters
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = _node(["--head", "--port", str(port), "--include-dashboard", "false"], base / "h", base / "head.log")
    worker = None
    try:
        # This process joins first, so it is attached to the head's raylet (killing the worker node spares it).
        _wait(lambda: ray.init(address=address, logging_level="WARNING") or True, 120, "the head node")
        head_id = ray.get_runtime_context().get_node_id()
        worker = _node(["--address", address], base / "w", base / "worker.log")
        nodes = _wait(lambda: [n for n in ray.nodes() if n["Alive"]] if sum(n["Alive"] for n in ray.nodes()) == 2
                      else None, 120, "the worker node")
        worker_id = next(n["NodeID"] for n in nodes if n["NodeID"] != head_id)
        yield Cluster(address, head_id, worker_id, worker)
    finally:
        ray.shutdown()
        for node in (worker, head):
            if node is not None:
                _stop(node)
        shutil.rmtree(base, ignore_errors=True)


def _kill_node_when_its_trial_runs(cluster: Cluster, experiment_id: str, seen: dict[str, str]) -> threading.Thread:
    """A watcher: as soon as a trial run is RUNNING on the worker node, SIGKILL that node's processes."""

    def watch() -> None:
        client, deadline = MlflowClient(), time.monotonic() + 600
        while time.monotonic() < deadline and cluster.worker.poll() is None:
            runs = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and "
                                                       f"tags.{RAY_NODE_TAG} = '{cluster.worker_id}'")
            if runs:
                seen["run_id"] = runs[0].info.run_id
                os.killpg(cluster.worker.pid, signal.SIGKILL)
                cluster.worker.wait(timeout=30)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_trial_of_a_killed_node_is_retried_on_the_other_and_finishes(cluster):
    started = time.monotonic()
    base_run = train(TrainSpec("resnet8", DataSpec("synthetic", None, 300, 50, 0),
                               TrainConfig(epochs=0.2, batch_size=64, lr=0.1),
                               RunSpec(EXPERIMENT, "cpu", progress=False, precisions=())))
    experiment_id = MlflowClient().get_experiment_by_name(EXPERIMENT).experiment_id
    seen: dict[str, str] = {}
    watcher = _kill_node_when_its_trial_runs(cluster, experiment_id, seen)
    base = PruneBase(f"runs:/{base_run}/model", precisions=(), device="cpu", experiment_name=EXPERIMENT)
    config = SweepConfig(base, ["global_l1"], [0.3, 0.6], recipe_axes={"finetune_epochs": [1.0], "tta_flip": [False]},
                         executor="ray", ray_address=cluster.address, log=lambda _line: None)
    result = run_sweep(config)
    watcher.join(timeout=60)

    assert "run_id" in seen, "no trial ran on the worker node"
    client = MlflowClient()
    assert [t.status for t in result.trials] == [FINISHED, FINISHED]
    (lost,) = [t for t in result.trials if t.run_id == seen["run_id"]]
    assert lost.attempts == 2
    run = client.get_run(lost.run_id)
    assert run.info.status == FINISHED and run.data.tags["lost_attempt_1"].startswith("ray: ")
    assert {client.get_run(t.run_id).data.tags[RAY_NODE_TAG] for t in result.trials} == {cluster.head_id}, \
        "both trials finished on the head: the lost one was retried there"
    assert sorted(p.run_id for p in result.compare.candidates) == sorted(t.run_id for t in result.trials)
    left = [r.info.run_id for status in ("RUNNING", "SCHEDULED")
            for r in client.search_runs([experiment_id], f"attributes.status = '{status}'")]
    assert left == []
    print(f"two-node Ray sweep with a node killed: {time.monotonic() - started:.1f} s after the cluster was up")
