"""Where a study's trials run: one after another in this process (`local`), or as Ray tasks (`ray`:
`@ray.remote(num_cpus=cpus_per_trial)`, each task setting the tracking URI, the client credentials and its torch
threads itself). A Ray task whose worker or node dies comes back as a *lost* outcome (`TrialOutcome.lost`): the
runner ends that attempt's run KILLED and retries it elsewhere."""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

from prune_tracker.studies.trials import TrialOutcome, TrialTask, execute_trial, first_line
from prune_tracker.tracking import trials as trial_runs

EXECUTORS = ("local", "ray")
RAY_NODE_TAG = "ray_node_id"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def ray_trial(task: TrialTask) -> TrialOutcome:
    """The Ray task: set the tracking URI and credentials in this worker, tag the trial's run with the Ray node it
    runs on (`ray_node_id`), then run the trial."""
    import ray

    trial_runs.apply_client_environment(task.env)
    node = ray.get_runtime_context().get_node_id()
    return execute_trial(replace(task, tags={**task.tags, RAY_NODE_TAG: node}))


class LocalExecutor:
    """Trials one after another in this process (nested under the study's active run)."""

    name = "local"
    capacity = 1

    def __init__(self) -> None:
        self._queue: deque[TrialTask] = deque()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.clear()

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def submit(self, task: TrialTask) -> None:
        self._queue.append(task)

    def next_outcome(self) -> TrialOutcome:
        return execute_trial(self._queue.popleft())


def import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError("executor=ray needs the ray package: pip install 'prune-tracker[ray]' (or pip install ray)"
                         ) from None
    return ray


class RayExecutor:
    """Trials as Ray tasks of `cpus_per_trial` CPUs each: on the cluster at `address` (`auto`: the one this machine
    belongs to), else on a local `ray.init(num_cpus=num_cpus)` (default: every core) shut down at the end. A Ray
    already initialised in this process is used as it is and left running."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_trial: int = 1):
        self.address, self.num_cpus, self.cpus_per_trial = address or None, num_cpus, cpus_per_trial
        self._pending: dict[Any, TrialTask] = {}
        self._owned = False

    def _init_args(self) -> dict[str, Any]:
        if self.address:
            return {"address": self.address, "logging_level": logging.WARNING}
        # Workers import prune_tracker from the source this process runs (also when it is not installed).
        path = os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        return {"num_cpus": self.num_cpus or os.cpu_count() or 1, "include_dashboard": False,
                "logging_level": logging.WARNING, "runtime_env": {"env_vars": {"PYTHONPATH": path}}}

    def __enter__(self) -> RayExecutor:
        self._ray = import_ray()
        if not self._ray.is_initialized():
            try:
                self._ray.init(**self._init_args())
            except ConnectionError as err:
                raise ValueError(f"ray_address={self.address!r}: {first_line(err)}; start a cluster (ray start "
                                 "--head) or leave ray_address empty for a local one") from None
            self._owned = True
        self._remote = self._ray.remote(num_cpus=self.cpus_per_trial, max_retries=0)(ray_trial)
        return self

    def __exit__(self, *exc: object) -> None:
        for ref in self._pending:
            self._ray.cancel(ref, force=True)
        self._pending.clear()
        if self._owned:
            self._ray.shutdown()

    @property
    def capacity(self) -> int:
        cpus = self._ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus // self.cpus_per_trial))

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def submit(self, task: TrialTask) -> None:
        self._pending[self._remote.remote(task)] = task

    def next_outcome(self) -> TrialOutcome:
        ready, _ = self._ray.wait(list(self._pending), num_returns=1)
        task = self._pending.pop(ready[0])
        try:
            return self._ray.get(ready[0])
        except self._ray.exceptions.RayTaskError as err:  # the task raised past execute_trial (SystemExit, ...)
            return TrialOutcome(task.index, False, task.run_id, f"ray: {first_line(err)}", str(err))
        except self._ray.exceptions.RayError as err:  # its worker or node died, its result was lost, ...
            return TrialOutcome(task.index, False, task.run_id, f"ray: {type(err).__name__}: {first_line(err)}",
                                str(err), lost=True)


def make_executor(name: str, ray_address: str | None = None, ray_num_cpus: int | None = None,
                  cpus_per_trial: int = 1) -> LocalExecutor | RayExecutor:
    check_executor(name, ray_address, cpus_per_trial)
    if name == "ray":
        return RayExecutor(ray_address, ray_num_cpus, cpus_per_trial)
    return LocalExecutor()


def check_executor(name: str, ray_address: str | None, cpus_per_trial: int) -> None:
    if name not in EXECUTORS:
        raise ValueError(f"executor={name!r} is not allowed; allowed: {', '.join(EXECUTORS)}")
    if ray_address and name != "ray":
        raise ValueError(f"ray_address={ray_address!r} needs executor=ray")
    if cpus_per_trial < 1:
        raise ValueError(f"cpus_per_trial={cpus_per_trial} must be an integer >= 1")
    if name == "ray":
        import_ray()
