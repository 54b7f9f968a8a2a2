"""A team server for tests: PostgreSQL backend + MLflow basic-auth on 127.0.0.1, free ports, a temporary root.

``tests/conftest.py`` imports the fixture, so any test can request it (it starts on first use)::

    def test_something(team_server):
        team_server.uri                          # "http://127.0.0.1:<port>"
        team_server.admin_user, team_server.admin_password
        alice = team_server.create_user()        # User(name, password): a new user, random name and password
        team_server.grant(alice, "my-exp", "EDIT")   # experiment by name (or id); READ USE EDIT MANAGE ...
        team_server.client_env(alice)            # {MLFLOW_TRACKING_URI, _USERNAME, _PASSWORD} for a subprocess
        with team_server.login(alice):           # the same three variables in os.environ, restored afterwards
            mlflow.MlflowClient(team_server.uri).create_run(...)
        with team_server.login(team_server.admin):   # as the admin (create experiments, read everything)
            ...

One server per pytest process: every module importing the fixture shares it (reference counted), it starts on
first use and stops when the last user is done (server process group and PostgreSQL cluster; the root is
removed). The admin password and Flask secret key are generated here and given only to the server's
environment. ``running_team_server(...)`` (prune_tracker.tracking.server) is the plain context manager under it.
Needs PostgreSQL's server binaries (Debian's ``postgresql``; ``.ci/run`` installs it) and the ``[server]`` extra.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

CREDENTIAL_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
_shared: dict[str, object] = {"server": None, "users": 0, "cm": None, "root": None}


@dataclass(frozen=True)
class User:
    name: str
    password: str


@dataclass
class TeamServerHandle:
    """What the ``team_server`` fixture yields (see the module docstring)."""

    uri: str
    admin_user: str
    admin_password: str
    root: Path

    @property
    def admin(self) -> User:
        return User(self.admin_user, self.admin_password)

    def client_env(self, user: User | None) -> dict[str, str]:
        """Environment for a client process acting as ``user`` (None: no credentials at all)."""
        env = {"MLFLOW_TRACKING_URI": self.uri}
        if user is not None:
            env.update(MLFLOW_TRACKING_USERNAME=user.name, MLFLOW_TRACKING_PASSWORD=user.password)
        return env

    @contextmanager
    def login(self, user: User | None) -> Iterator[User | None]:
        saved = {name: os.environ.get(name) for name in CREDENTIAL_ENV}
        for name in CREDENTIAL_ENV:
            os.environ.pop(name, None)
        os.environ.update(self.client_env(user))
        try:
            yield user
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def create_user(self, name: str = "", password: str = "", admin: bool = False) -> User:
        """A new user (random name and password unless given), created by the admin."""
        user = User(name or f"user-{secrets.token_hex(4)}", password or secrets.token_urlsafe(16))
        from prune_tracker.tracking.server import add_user

        with self.login(self.admin):
            add_user(self.uri, user.name, user.password, admin=admin)
        return user

    def grant(self, user: User | str, experiment: str, permission: str) -> str:
        """Give ``user`` ``permission`` on ``experiment`` (name or id); returns the experiment id."""
        from prune_tracker.tracking.server import grant

        with self.login(self.admin):
            return grant(self.uri, user.name if isinstance(user, User) else user, experiment, permission)


def _acquire() -> TeamServerHandle:
    if _shared["server"] is None:
        # imports torch and mlflow: only when used
        from prune_tracker.tracking.server import LocalServerOptions, running_team_server

        base = Path(tempfile.mkdtemp(prefix="prune-tracker-team-server-"))
        base.chmod(0o711)  # as root, PostgreSQL runs as `postgres`, which must pass through to the root
        root = base / "server"  # created by the server itself (private from creation)
        admin_password = secrets.token_urlsafe(18)
        env = {**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
               "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32), "MLFLOW_DISABLE_TELEMETRY": "true"}
        cm = running_team_server(root, LocalServerOptions(auth=True), env=env, timeout=300)
        try:
            uri = cm.__enter__()
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        _shared.update(server=TeamServerHandle(uri, "admin", admin_password, root), cm=cm, root=base)
    _shared["users"] = int(_shared["users"]) + 1  # type: ignore[call-overload]
    return _shared["server"]  # type: ignore[return-value]


def _release() -> None:
    _shared["users"] = int(_shared["users"]) - 1  # type: ignore[call-overload]
    if _shared["users"] == 0 and _shared["cm"] is not None:
        cm, root = _shared["cm"], _shared["root"]
        _shared.update(server=None, cm=None, root=None)
        try:
            cm.__exit__(None, None, None)  # type: ignore[attr-defined]
        finally:
            shutil.rmtree(root, ignore_errors=True)  # type: ignore[arg-type]


@pytest.fixture(scope="session", name="team_server")
def team_server() -> Iterator[TeamServerHandle]:
    """Session-wide PostgreSQL + basic-auth team server; see the module docstring for the handle's interface."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    handle = _acquire()
    try:
        yield handle
    finally:
        _release()
