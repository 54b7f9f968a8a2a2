"""Orphan runs: status RUNNING, but the process that logged them is gone (killed with SIGKILL, out of memory, the
machine rebooted), so nothing will ever end them. `mark_orphans_killed` marks them KILLED; `prune-tracker gc` and
the sweep (before it fans out) call it.

How a run is known to be orphaned (tags written by `tracked_run`, see tracking/owner.py):
* owner on this host (same hostname): orphaned when the host rebooted since (boot id), no process has the owner
  pid, the pid is a zombie, or it now belongs to a newer process (start time differs). A live owner is never
  touched, however old its heartbeat.
* owner on another host, or no owner tags (a run `mlflow run` created whose command never started, a run logged
  by older code): orphaned when its last sign of life — the ``heartbeat`` tag, else the run's start time — is older
  than `stale_after` seconds (None: never). Compare clocks of different hosts only at that scale (minutes).
A marked run keeps its data; it gets status KILLED, an end time at its last heartbeat, and the tag ``gc_reason``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from prune_tracker.tracking.owner import HEARTBEAT, Owner, parse_iso

GC_REASON_TAG = "gc_reason"
DEFAULT_STALE_AFTER = "15m"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_OFF = ("off", "none", "never")


@dataclass(frozen=True)
class Orphan:
    run_id: str
    experiment_name: str
    run_name: str
    reason: str


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
    """`45s`, `12m05s`, `3h20m`, `2d04h`."""
    s = int(round(seconds))
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def last_seen(run: Run) -> float:
    """Seconds since the epoch of the run's last sign of life: its heartbeat tag, else its start time."""
    beat = parse_iso(run.data.tags.get(HEARTBEAT, ""))
    start = run.info.start_time / 1000
    return max(start, beat) if beat is not None else start


def orphan_reason(run: Run, stale_after: float | None, now: float | None = None) -> str | None:
    """Why the RUNNING `run` is an orphan, or None when it is (or may be) alive."""
    owner = Owner.from_tags(run.data.tags)
    if owner is not None and owner.on_this_host():
        return owner.gone_reason()
    if stale_after is None:
        return None
    idle = (time.time() if now is None else now) - last_seen(run)
    if idle <= stale_after:
        return None
    who = f"owner pid {owner.pid} on host {owner.host}" if owner else "no owner tags"
    return f"no heartbeat for {format_duration(idle)} (stale after {format_duration(stale_after)}; {who})"


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


def running_runs(client: MlflowClient, experiment_ids: list[str]) -> list[Run]:
    runs, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def find_orphans(experiment_names: list[str] | None = None, stale_after: float | None = None,
                 client: MlflowClient | None = None) -> list[Orphan]:
    """The RUNNING runs of these experiments (None: all) that are orphans (see the module's docstring)."""
    client = client or MlflowClient()
    experiments = _experiments(client, experiment_names)
    now = time.time()
    orphans = []
    for run in running_runs(client, list(experiments)):
        reason = orphan_reason(run, stale_after, now)
        if reason is not None:
            orphans.append(Orphan(run.info.run_id, experiments[run.info.experiment_id], run.info.run_name or "",
                                  reason))
    return orphans


def _mark_killed(client: MlflowClient, orphan: Orphan, stale_after: float | None) -> Orphan | None:
    """Mark one orphan KILLED unless, looked at again, it ended, beat or was resumed meanwhile (None then)."""
    try:
        run = client.get_run(orphan.run_id)
    except MlflowException:
        return None
    reason = orphan_reason(run, stale_after) if run.info.status == "RUNNING" else None
    if reason is None:
        return None
    client.set_tag(orphan.run_id, GC_REASON_TAG, reason)
    end_ms = int(last_seen(run) * 1000) if HEARTBEAT in run.data.tags else None
    client.set_terminated(orphan.run_id, "KILLED", end_time=end_ms)
    return Orphan(orphan.run_id, orphan.experiment_name, orphan.run_name, reason)


def mark_orphans_killed(
    experiment_names: list[str] | None = None,
    stale_after: float | str | None = DEFAULT_STALE_AFTER,
    dry_run: bool = False,
    client: MlflowClient | None = None,
) -> list[Orphan]:
    """Mark the orphan runs of these experiments (None: every active experiment) KILLED and return them (with
    `dry_run`, only return them). `stale_after`: seconds, or a duration such as ``15m`` (None / ``off``: judge
    only runs owned by this host)."""
    seconds = parse_duration(stale_after)
    client = client or MlflowClient()
    orphans = find_orphans(experiment_names, seconds, client)
    if dry_run:
        return orphans
    marked = (_mark_killed(client, orphan, seconds) for orphan in orphans)
    return [orphan for orphan in marked if orphan is not None]
