"""Who owns a run: the process that logs it, recorded as tags when the run starts, and a heartbeat tag it renews
while the run is open. `gc` (tracking/gc.py) reads them to tell a live run from an orphan whose process is gone.

Tags (all strings): ``owner_host`` (hostname), ``owner_boot_id`` (Linux: changes on every boot), ``owner_pid_ns``
(the PID namespace, e.g. ``pid:[4026531836]``: containers sharing a kernel have their own), ``owner_pid``,
``owner_start_ticks`` (the process start time in clock ticks since boot, from /proc: a pid reused by a new
process has another), ``heartbeat`` (UTC time, ISO 8601, renewed every ``PRUNE_TRACKER_HEARTBEAT_SECONDS``,
default 60).

A process can judge an owner by its pid only when it sees the same pids: same host name, same boot, same PID
namespace. Anything else (another machine, a container with its own PID namespace, a host that rebooted, or one
of several machines sharing a host name) is judged by its heartbeat alone."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

OWNER_HOST, OWNER_BOOT_ID, OWNER_PID, OWNER_START = "owner_host", "owner_boot_id", "owner_pid", "owner_start_ticks"
OWNER_PID_NS = "owner_pid_ns"
HEARTBEAT = "heartbeat"
HEARTBEAT_ENV = "PRUNE_TRACKER_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT_SECONDS = 60.0

_log = logging.getLogger(__name__)


def boot_id() -> str:
    """This boot of this machine (Linux), '' elsewhere."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    """This process's PID namespace (Linux: `pid:[<inode>]`), '' where /proc does not tell."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from the field after the command name (which may hold spaces), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def start_ticks(pid: int) -> str:
    """The start time of process `pid` in clock ticks since boot ('' where /proc is missing)."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else ""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float | None:
    """Seconds since the epoch of a ``heartbeat`` tag, None when it is not one."""
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


def owner_tags() -> dict[str, str]:
    """The tags naming this process as the owner of a run, with a first heartbeat."""
    pid = os.getpid()
    return {OWNER_HOST: socket.gethostname(), OWNER_BOOT_ID: boot_id(), OWNER_PID_NS: pid_namespace(),
            OWNER_PID: str(pid), OWNER_START: start_ticks(pid), HEARTBEAT: now_iso()}


@dataclass(frozen=True)
class Owner:
    host: str
    boot_id: str
    pid: int
    start_ticks: str
    pid_ns: str = ""

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Owner | None:
        try:
            return cls(tags[OWNER_HOST], tags.get(OWNER_BOOT_ID, ""), int(tags[OWNER_PID]), tags.get(OWNER_START, ""),
                       tags.get(OWNER_PID_NS, ""))
        except (KeyError, ValueError):
            return None

    def sees_same_pids(self) -> bool:
        """Whether this process sees the owner's pids: same host name, same boot, same PID namespace (all known)."""
        here = (socket.gethostname(), boot_id(), pid_namespace())
        return all(here) and (self.host, self.boot_id, self.pid_ns) == here

    def gone_reason(self) -> str | None:
        """Why the owner process no longer exists (call only when `sees_same_pids`), None when it is alive: no
        process has the pid, it is a zombie, or the pid belongs to a newer process."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return f"owner process {self.pid} on host {self.host} is gone"
        except PermissionError:
            pass  # alive, another user's
        fields = _stat_fields(self.pid)
        if fields and fields[0] in ("Z", "X"):
            return f"owner process {self.pid} on host {self.host} has exited (zombie)"
        if self.start_ticks and fields and len(fields) > 19 and fields[19] != self.start_ticks:
            return f"owner process {self.pid} on host {self.host} is gone (the pid now belongs to another process)"
        return None


def heartbeat_seconds() -> float:
    raw = os.environ.get(HEARTBEAT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_HEARTBEAT_SECONDS
    except ValueError:
        raise ValueError(f"{HEARTBEAT_ENV}={raw!r} is not allowed; expected a number of seconds > 0") from None
    if not value > 0:
        raise ValueError(f"{HEARTBEAT_ENV}={raw!r} is not allowed; expected a number of seconds > 0")
    return value


class Heartbeat:
    """A daemon thread renewing the run's ``heartbeat`` tag every `interval` seconds until `stop()`. A failed
    renewal (server down past MLflow's own retries) is logged at debug level and tried again next time."""

    def __init__(self, run_id: str, tracking_uri: str, interval: float):
        self.run_id, self.interval = run_id, interval
        self._client = MlflowClient(tracking_uri)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id[:8]}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._client.set_tag(self.run_id, HEARTBEAT, now_iso())
            except Exception as err:  # noqa: BLE001 - a missed beat must never end the run
                _log.debug("heartbeat of run %s failed: %s", self.run_id, err)

    def stop(self) -> None:
        """Stop beating; waits briefly for a beat in flight (a beat stuck in HTTP retries is left to finish)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
