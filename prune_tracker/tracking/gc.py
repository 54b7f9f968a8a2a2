"""Orphan runs: RUNNING or SCHEDULED, but the process that owns them is gone (killed with SIGKILL, out of memory, the
machine rebooted), so nothing will ever end or start them. `mark_orphans_killed` marks them KILLED; `prune-tracker
gc` and the sweep (before it fans out) call it.

How a run is known to be orphaned (tags written by `tracked_run` and, for a trial's SCHEDULED run, by the study's
process that created it; see tracking/owner.py):
* owner seen by this process (same host name, boot and PID namespace): orphaned when no process has the owner pid,
  the pid is a zombie, or it now belongs to a newer process (start time differs). A live owner is never touched,
  however old its heartbeat.
* any other owner (another machine, a container with its own PID namespace, a host that rebooted or shares its
  name with others), or no owner tags (a run `mlflow run` created whose command never started, a run logged by
  older code): a RUNNING run is orphaned when its last sign of life — the ``heartbeat`` tag, else its start time —
  is older than `stale_after` seconds (None: never). Compare clocks of different hosts only at that scale.
  `stale_after` must span at least 3 heartbeat intervals, or a live run could be marked between two beats.
* a SCHEDULED run whose owner is not seen here is orphaned when the study run it belongs to (its parent) is no
  longer RUNNING or is an orphan itself: nobody is left to start it.
A marked run keeps its data; it gets status KILLED, an end time at its last sign of life, and the tag ``gc_reason``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from prune_tracker.tracking.owner import HEARTBEAT, HEARTBEAT_ENV, Owner, heartbeat_seconds, parse_iso

GC_REASON_TAG = "gc_reason"
DEFAULT_STALE_AFTER = "15m"
MIN_HEARTBEATS = 3  # stale_after must span this many heartbeat intervals
RUNNING, SCHEDULED = "RUNNING", "SCHEDULED"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_OFF = ("off", "none", "never")


@dataclass(frozen=True)
class Orphan:
    run_id: str
    experiment_name: str
    run_name: str
    reason: str
    status: str = RUNNING  # what it was: RUNNING or SCHEDULED


def parse_duration(text: str | float | None) -> float | None:
    """Seconds of `90s`, `15m`, `2h`, `1d` or a bare number of seconds; None for `off` / `none` / `never`."""
    if text is None or (isinstance(text, str) and text.strip().lower() in _OFF):
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text).lower())
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"] if match else 0.0
    if seconds <= 0:
        raise ValueError(f"stale_after={text!r} is not allowed; expected a duration > 0 such as 90s, 15m, 2h, 1d "
                         "(a bare number is seconds), or off")
    return seconds


def format_duration(seconds: float) -> str:
    """`0.3s`, `45s`, `12m05s`, `3h20m`, `2d04h`."""
    if seconds < 10:
        return f"{seconds:.3g}s"
    s = int(round(seconds))
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def stale_after_seconds(text: str | float | None) -> float | None:
    """`parse_duration`, refusing a duration shorter than 3 heartbeat intervals (ValueError, one line)."""
    seconds = parse_duration(text)
    interval = heartbeat_seconds()
    if seconds is not None and seconds < MIN_HEARTBEATS * interval:
        shortest = format_duration(MIN_HEARTBEATS * interval)
        raise ValueError(f"stale_after={text!r} is shorter than {MIN_HEARTBEATS} heartbeat intervals "
                         f"({MIN_HEARTBEATS} x {format_duration(interval)} = {shortest}): a live run on another host "
                         f"could be marked KILLED between two beats; use >= {shortest} (or a shorter "
                         f"{HEARTBEAT_ENV} for every process)")
    return seconds


def default_stale_after() -> float:
    """The stale-after the sweep and `resume_run_id` judge by: 15 minutes, or 3 heartbeat intervals if longer."""
    return max(parse_duration(DEFAULT_STALE_AFTER) or 0.0, MIN_HEARTBEATS * heartbeat_seconds())


def last_seen(run: Run) -> float:
    """Seconds since the epoch of the run's last sign of life: its heartbeat tag, else its start time."""
    beat = parse_iso(run.data.tags.get(HEARTBEAT, ""))
    start = run.info.start_time / 1000
    return max(start, beat) if beat is not None else start


def orphan_reason(run: Run, stale_after: float | None, now: float | None = None) -> str | None:
    """Why the RUNNING `run` is an orphan, or None when it is (or may be) alive."""
    owner = Owner.from_tags(run.data.tags)
    if owner is not None and owner.sees_same_pids():
        return owner.gone_reason()
    if stale_after is None:
        return None
    idle = (time.time() if now is None else now) - last_seen(run)
    if idle <= stale_after:
        return None
    who = f"owner pid {owner.pid} on host {owner.host}" if owner else "no owner tags"
    return f"no heartbeat for {format_duration(idle)} (stale after {format_duration(stale_after)}; {who})"


def scheduled_orphan_reason(run: Run, stale_after: float | None, orphan_ids: set[str],
                            client: MlflowClient, now: float | None = None) -> str | None:
    """Why the SCHEDULED `run` will never start, or None when its study may still start it: its owner (the study's
    process) is gone, or its study run (`orphan_ids`: RUNNING orphans found meanwhile) ended or is an orphan."""
    owner = Owner.from_tags(run.data.tags)
    if owner is not None and owner.sees_same_pids():
        gone = owner.gone_reason()
        return f"never started: {gone}" if gone else None
    parent = run.data.tags.get(MLFLOW_PARENT_RUN_ID)
    if parent is None:
        reason = orphan_reason(run, stale_after, now)  # no study to ask: its own last sign of life decides
        return f"never started: {reason}" if reason else None
    if parent in orphan_ids:
        return f"never started, and its study run {parent} is an orphan"
    try:
        status = client.get_run(parent).info.status
    except MlflowException:
        return f"never started, and its study run {parent} is gone"
    return None if status == RUNNING else f"never started, and its study run {parent} ended {status}"


def _experiments(client: MlflowClient, names: list[str] | None) -> dict[str, str]:
    """experiment id -> name: the named ones (an unknown name is an error), or every active experiment."""
    if not names:
        found, token = {}, None
        while True:
            page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, page_token=token)
            found.update({e.experiment_id: e.name for e in page})
            token = page.token
            if not token:
                return found
    found = {}
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise ValueError(f"experiment {name!r} not found; name an existing experiment or omit experiment_names "
                             "to check every experiment")
        found[experiment.experiment_id] = name
    return found


def runs_with_status(client: MlflowClient, experiment_ids: list[str], status: str = RUNNING) -> Iterator[Run]:
    token = None
    while experiment_ids:
        page = client.search_runs(experiment_ids, f"attributes.status = '{status}'", max_results=1000,
                                  page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def running_runs(client: MlflowClient, experiment_ids: list[str]) -> list[Run]:
    return list(runs_with_status(client, experiment_ids, RUNNING))


def _judge(run: Run, stale_after: float | None, orphan_ids: set[str], client: MlflowClient,
           now: float | None = None) -> str | None:
    if run.info.status == RUNNING:
        return orphan_reason(run, stale_after, now)
    if run.info.status == SCHEDULED:
        return scheduled_orphan_reason(run, stale_after, orphan_ids, client, now)
    return None


def find_orphans(experiment_names: list[str] | None = None, stale_after: float | None = None,
                 client: MlflowClient | None = None) -> list[Orphan]:
    """The RUNNING, then the SCHEDULED runs of these experiments (None: all) that are orphans (module docstring)."""
    client = client or MlflowClient()
    experiments = _experiments(client, experiment_names)
    now, orphans = time.time(), []
    for status in (RUNNING, SCHEDULED):
        found = {o.run_id for o in orphans}
        for run in runs_with_status(client, list(experiments), status):
            reason = _judge(run, stale_after, found, client, now)
            if reason is not None:
                orphans.append(Orphan(run.info.run_id, experiments[run.info.experiment_id], run.info.run_name or "",
                                      reason, status))
    return orphans


def _mark_killed(client: MlflowClient, orphan: Orphan, stale_after: float | None, orphan_ids: set[str]
                 ) -> Orphan | None:
    """Mark one orphan KILLED unless, looked at again, it started, ended, beat or was resumed meanwhile (None)."""
    try:
        run = client.get_run(orphan.run_id)
    except MlflowException:
        return None
    reason = _judge(run, stale_after, orphan_ids, client) if run.info.status == orphan.status else None
    if reason is None:
        return None
    client.set_tag(orphan.run_id, GC_REASON_TAG, reason)
    end_ms = int(last_seen(run) * 1000) if HEARTBEAT in run.data.tags else None
    client.set_terminated(orphan.run_id, "KILLED", end_time=end_ms)
    return Orphan(orphan.run_id, orphan.experiment_name, orphan.run_name, reason, orphan.status)


def mark_orphans_killed(
    experiment_names: list[str] | None = None,
    stale_after: float | str | None = DEFAULT_STALE_AFTER,
    dry_run: bool = False,
    client: MlflowClient | None = None,
) -> list[Orphan]:
    """Mark the orphan runs of these experiments (None: every active experiment) KILLED and return them (with
    `dry_run`, only return them). `stale_after`: seconds, or a duration such as ``15m`` (None / ``off``: judge
    only runs whose owner this process sees), at least 3 heartbeat intervals."""
    seconds = stale_after_seconds(stale_after)
    client = client or MlflowClient()
    orphans = find_orphans(experiment_names, seconds, client)
    if dry_run:
        return orphans
    marked: list[Orphan] = []
    for orphan in orphans:  # RUNNING ones first: a SCHEDULED one may be judged by its (now KILLED) study run
        done = _mark_killed(client, orphan, seconds, {o.run_id for o in marked})
        if done is not None:
            marked.append(done)
    return marked
