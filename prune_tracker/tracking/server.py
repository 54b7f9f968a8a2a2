"""The team tracking server: `mlflow server` on a local PostgreSQL cluster, proxied artifacts, optional basic-auth.

A server root (``--root``; default ``~/.prune-tracker/server``, or ``/var/lib/prune-tracker/server`` for root, whose
home the ``postgres`` user cannot enter) holds everything the server writes, outside any checkout::

    postgres/data, postgres/socket, postgres/postgres.log   the cluster (owned by ``postgres`` when run as root)
    pgpass            libpq password file (0600): the database password generated at ``initdb``
    basic_auth.ini    MLflow's auth config (auth database URI, admin user name, default permission; no secret)
    artifacts/        the default ``--artifacts-destination``
    mlflow-server.log

The admin password and the Flask secret key come from the environment only (``MLFLOW_AUTH_ADMIN_PASSWORD``,
``MLFLOW_FLASK_SERVER_SECRET_KEY``); nothing here has a default for them or writes them to a file. The database
password reaches the server through ``PGPASSFILE``, so no process argument and no URI carries a secret.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_PG_PORT = 54329
DEFAULT_WORKERS = 2
# MLflow checks a basic-auth password with scrypt on every request (0.1-0.2 s of CPU here) unless its credential
# cache is on; with it, a password change reaches the other workers within this many seconds.
DEFAULT_AUTH_CACHE_TTL_S = 60
HEALTH_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
MIN_PASSWORD_CHARS = 12  # MLflow's basic-auth password policy (admin and users alike)
PG_USER = "prune_tracker"
TRACKING_DB = "mlflow"
AUTH_DB = "mlflow_auth"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
AUTH_ENV = (ADMIN_PASSWORD_ENV, SECRET_KEY_ENV)
# Per-experiment permissions of MLflow 3.17's basic-auth app (mlflow.server.auth.permissions.ALL_PERMISSIONS).
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS", "DENY")
INSTALL_HINT = "install Debian's postgresql package (apt-get update && apt-get install -y postgresql)"


class ServerError(ValueError):
    """The team server cannot be set up or started: one line naming what is wrong and what to do."""


# ---------------------------------------------------------------- configuration


def default_root() -> Path:
    """``$PRUNE_TRACKER_SERVER_ROOT``, else ``~/.prune-tracker/server`` (``/var/lib/prune-tracker/server`` as root)."""
    if os.environ.get("PRUNE_TRACKER_SERVER_ROOT"):
        return Path(os.environ["PRUNE_TRACKER_SERVER_ROOT"])
    if os.geteuid() == 0:
        return Path("/var/lib/prune-tracker/server")
    return Path.home() / ".prune-tracker" / "server"


@dataclass(frozen=True)
class ServerConfig:
    """How to run the team server. ``artifacts_destination`` "" means ``<root>/artifacts``; any URI MLflow can
    write (``s3://bucket/prefix``, ...) is passed to ``mlflow server --artifacts-destination`` as is."""

    root: Path = field(default_factory=default_root)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = DEFAULT_WORKERS
    auth: bool = False
    artifacts_destination: str = ""
    pg_port: int = DEFAULT_PG_PORT
    allowed_hosts: str = ""
    admin_username: str = "admin"
    default_permission: str = "READ"
    auth_cache_ttl: int = DEFAULT_AUTH_CACHE_TTL_S

    @property
    def uri(self) -> str:
        """The address a client on this machine uses (a wildcard bind is reached through loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def artifacts(self) -> str:
        return self.artifacts_destination or str(self.root / "artifacts")


def validate_config(config: ServerConfig) -> None:
    for name, port in (("port", config.port), ("pg_port", config.pg_port)):
        if not 1 <= port <= 65535:
            raise ServerError(f"{name}={port} is not allowed; expected a TCP port 1-65535")
    if config.port == config.pg_port:
        raise ServerError(f"port={config.port} equals pg_port; the server and PostgreSQL need different ports")
    if config.workers < 1:
        raise ServerError(f"workers={config.workers} is not allowed; expected an integer >= 1")
    if config.auth_cache_ttl < 0:
        raise ServerError(f"auth_cache_ttl={config.auth_cache_ttl} is not allowed; expected seconds >= 0 (0 = off)")
    if config.default_permission not in PERMISSIONS:
        raise ServerError(f"default_permission={config.default_permission!r} is not allowed; "
                          f"expected one of {', '.join(PERMISSIONS)}")
    dest = config.artifacts_destination
    if dest and "://" not in dest and not Path(dest).is_absolute():
        raise ServerError(f"artifacts_destination={dest!r} is not allowed; expected an absolute directory or a "
                          "URI such as s3://bucket/prefix")


def check_auth_env(env: Mapping[str, str]) -> None:
    """Refuse ``--auth`` unless the admin password (>= 12 characters) and the secret key are in ``env``."""
    missing = [name for name in AUTH_ENV if not env.get(name)]
    if missing:
        raise ServerError(f"--auth needs {' and '.join(missing)} set in the environment "
                          f"(admin password of >= {MIN_PASSWORD_CHARS} characters, Flask secret key); "
                          "there is no default and they are never read from a file")
    length = len(env[ADMIN_PASSWORD_ENV])
    if length < MIN_PASSWORD_CHARS:
        raise ServerError(f"{ADMIN_PASSWORD_ENV} has {length} characters; MLflow's basic-auth needs "
                          f">= {MIN_PASSWORD_CHARS}")


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_in_use(port: int, host: str = DEFAULT_HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def _last_error_line(text: str) -> str:
    """The most telling line of a tool's output: the last one that names an error, else the last one."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"error|exception|fatal|refus|denied|could not", line, re.IGNORECASE):
            return line
    return lines[-1] if lines else "(no output)"


# ---------------------------------------------------------------- PostgreSQL


def find_pg_bin() -> Path:
    """The newest PostgreSQL server binaries: ``$PG_BIN``, Debian's /usr/lib/postgresql/<v>/bin, or PATH."""
    if os.environ.get("PG_BIN"):
        candidates = [Path(os.environ["PG_BIN"])]
    else:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version_key(p.parent.name))
        candidates = list(reversed(versions))
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    raise ServerError(f"PostgreSQL server binaries (initdb, pg_ctl) not found; {INSTALL_HINT} or set PG_BIN")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


class PostgresCluster:
    """A PostgreSQL cluster private to one server root, listening on 127.0.0.1:``port`` and a socket in the root.

    As root, PostgreSQL refuses to run: the cluster then belongs to the ``postgres`` user (``runuser``), which must
    be able to enter the root. Connections use scram-sha-256 with a password generated at ``initdb`` and kept in
    ``<root>/pgpass`` (0600), handed to libpq as ``PGPASSFILE``."""

    def __init__(self, root: Path, port: int = DEFAULT_PG_PORT):
        self.root, self.port = root, port
        self.dir = root / "postgres"
        self.data, self.socket, self.log = self.dir / "data", self.dir / "socket", self.dir / "postgres.log"
        self.passfile = root / "pgpass"
        self._bin: Path | None = None

    @property
    def bin(self) -> Path:
        if self._bin is None:
            self._bin = find_pg_bin()
        return self._bin

    @property
    def as_root(self) -> bool:
        return os.geteuid() == 0

    def env(self) -> dict[str, str]:
        return {"PGPASSFILE": str(self.passfile)}

    def uri(self, database: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def _owned(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if self.as_root else cmd

    def _run(self, cmd: list[str], what: str, timeout: float = 120) -> subprocess.CompletedProcess:
        try:
            done = subprocess.run(self._owned(cmd), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ServerError(f"{what} did not finish within {timeout:.0f} s (see {self.log})") from None
        if done.returncode != 0:
            raise ServerError(f"{what} failed: {_last_error_line(done.stderr + done.stdout)}")
        return done

    @property
    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for directory in (self.dir, self.socket):
            directory.mkdir(mode=0o700, exist_ok=True)
        if not self.as_root:
            return
        try:
            import pwd

            account = pwd.getpwnam("postgres")
        except KeyError:
            raise ServerError(f"running as root needs the `postgres` user to own the cluster; {INSTALL_HINT}") from None
        for directory in (self.dir, self.socket):
            os.chown(directory, account.pw_uid, account.pw_gid)
        if subprocess.run(self._owned(["test", "-w", str(self.dir)])).returncode != 0:
            raise ServerError(f"the postgres user cannot enter {self.dir}; choose a --root every user may traverse "
                              "(e.g. /var/lib/prune-tracker/server), not one under /root or a 0700 directory")

    def init(self) -> None:
        """``initdb`` a new cluster (superuser ``prune_tracker``, generated password written to ``pgpass``)."""
        self._prepare_dirs()
        if self.initialized:
            if not self.passfile.is_file():
                raise ServerError(f"{self.passfile} is missing for the existing cluster in {self.data}; restore it "
                                  "or remove the root to start afresh")
            return
        password = secrets.token_urlsafe(24)
        pwfile = self.dir / "initdb-password"
        pwfile.write_text(password + "\n")
        try:
            pwfile.chmod(0o600)
            if self.as_root:
                shutil.chown(pwfile, "postgres")
            self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", PG_USER, f"--pwfile={pwfile}",
                       "--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--no-instructions"],
                      "initdb")
        finally:
            pwfile.unlink(missing_ok=True)
        self.passfile.write_text(f"127.0.0.1:*:*:{PG_USER}:{password}\n")
        self.passfile.chmod(0o600)

    def running_port(self) -> int | None:
        """The port of the postmaster running on this data directory, None if none runs."""
        if not (self.data / "postmaster.pid").is_file():
            return None
        if subprocess.run(self._owned([str(self.bin / "pg_ctl"), "-D", str(self.data), "status"]),
                          capture_output=True).returncode != 0:  # fmt: skip
            return None
        lines = (self.data / "postmaster.pid").read_text().splitlines()
        return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None

    def start(self) -> bool:
        """Start the cluster; False when it was already running (on this port), so the caller must not stop it."""
        running = self.running_port()
        if running is not None:
            if running != self.port:
                raise ServerError(f"the cluster in {self.data} already runs on port {running}, not pg_port="
                                  f"{self.port}; stop it or pass --pg-port {running}")
            return False
        if _port_in_use(self.port):
            raise ServerError(f"pg_port={self.port} is already in use on 127.0.0.1; choose another --pg-port")
        options = f"-p {self.port} -k {self.socket} -c listen_addresses=127.0.0.1"
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                   "-w", "-t", "60", "start"], f"starting PostgreSQL (log: {self.log})")  # fmt: skip
        return True

    def stop(self) -> None:
        if self.running_port() is not None:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"],
                      "stopping PostgreSQL")

    def ensure_database(self, name: str) -> bool:
        """Create database ``name`` when missing; True when it was created."""
        try:
            import psycopg
        except ImportError:
            raise ServerError("the PostgreSQL driver is missing; pip install 'prune-tracker[server]' "
                              "(psycopg[binary])") from None
        conninfo = f"host=127.0.0.1 port={self.port} user={PG_USER} dbname=postgres passfile={self.passfile}"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return False
            conn.execute(f'CREATE DATABASE "{name}"')
            return True


# ---------------------------------------------------------------- the MLflow server


def write_auth_config(config: ServerConfig, cluster: PostgresCluster) -> Path:
    """``<root>/basic_auth.ini`` for ``MLFLOW_AUTH_CONFIG_PATH``: database, admin name, default permission, the
    credential cache's TTL. No password: MLflow reads the admin's from ``MLFLOW_AUTH_ADMIN_PASSWORD`` when it
    first creates the admin."""
    path = config.root / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        f"default_permission = {config.default_permission}\n"
        f"database_uri = {cluster.uri(AUTH_DB)}\n"
        f"admin_username = {config.admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {config.auth_cache_ttl}\n"
    )
    path.chmod(0o600)
    return path


def _python_step(args: list[str], env: Mapping[str, str], what: str, timeout: float = 300) -> None:
    try:
        done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=dict(env),
                              timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ServerError(f"{what} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise ServerError(f"{what} failed: {_last_error_line(done.stderr + done.stdout)}")


def migrate(config: ServerConfig, cluster: PostgresCluster, env: Mapping[str, str]) -> None:
    """Create the databases when missing and bring their schemas to this MLflow's head (a no-op when current):
    ``mlflow db upgrade`` for tracking, ``python -m mlflow.server.auth db upgrade`` for the auth database."""
    cluster.ensure_database(TRACKING_DB)
    _python_step(["mlflow", "db", "upgrade", cluster.uri(TRACKING_DB)], env, "mlflow db upgrade")
    if config.auth:
        cluster.ensure_database(AUTH_DB)
        _python_step(["mlflow.server.auth", "db", "upgrade", "--url", cluster.uri(AUTH_DB)], env,
                     "the auth database migration")


def server_command(config: ServerConfig, cluster: PostgresCluster) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", cluster.uri(TRACKING_DB),
           "--artifacts-destination", config.artifacts, "--host", config.host, "--port", str(config.port),
           "--workers", str(config.workers)]  # fmt: skip
    if config.auth:
        cmd += ["--app-name", "basic-auth"]
    if config.allowed_hosts:
        cmd += ["--allowed-hosts", config.allowed_hosts]
    return cmd


def server_env(config: ServerConfig, cluster: PostgresCluster, env: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: ``env`` plus the libpq password file, the auth config, and no job runner
    (prune-tracker submits no MLflow jobs; set MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true to keep it)."""
    out = {**env, **cluster.env()}
    out.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        out.pop(name, None)
    if config.auth:
        out["MLFLOW_AUTH_CONFIG_PATH"] = str(config.root / "basic_auth.ini")
    else:
        for name in AUTH_ENV:
            out.pop(name, None)
    return out


def _healthy(uri: str) -> bool:
    import requests

    try:
        resp = requests.get(f"{uri}/health", timeout=2)
    except requests.RequestException:
        return False
    return resp.status_code == 200 and resp.text.strip() == "OK"


def stop_process_group(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group led by ``proc`` (server, workers, helpers), SIGKILL what outlives ``timeout``."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with suppress(ProcessLookupError, PermissionError):  # workers left behind by a leader that died first
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class TeamServer:
    """A started team server: the ``mlflow server`` process group and the cluster it runs on."""

    config: ServerConfig
    process: subprocess.Popen
    cluster: PostgresCluster
    started_cluster: bool
    log: Path

    @property
    def uri(self) -> str:
        return self.config.uri

    def stop(self) -> None:
        """Stop the server's whole process group, then the cluster when this server started it."""
        try:
            stop_process_group(self.process)
        finally:
            if self.started_cluster:
                self.cluster.stop()

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"mlflow server exited with {self.process.returncode}: "
                                  f"{_last_error_line(self.log.read_text(errors='replace'))} (log: {self.log})")
            if _healthy(self.uri):
                return
            time.sleep(0.25)
        raise ServerError(f"mlflow server at {self.uri} not healthy after {timeout:.0f} s (log: {self.log})")


def start_team_server(config: ServerConfig, env: Mapping[str, str] | None = None,
                      timeout: float = HEALTH_TIMEOUT_S) -> TeamServer:
    """Set up (first use: ``initdb``, databases, migrations) and start the cluster and ``mlflow server`` in its
    own process group; return once ``/health`` answers. Whatever this started is stopped again on failure."""
    env = dict(os.environ if env is None else env)
    validate_config(config)
    if config.auth:
        check_auth_env(env)
    if _port_in_use(config.port):
        raise ServerError(f"port={config.port} is already in use on 127.0.0.1; choose another --port")
    cluster = PostgresCluster(config.root, config.pg_port)
    cluster.init()
    started_cluster = cluster.start()
    try:
        step_env = {**env, **cluster.env()}
        migrate(config, cluster, step_env)
        if config.auth:
            write_auth_config(config, cluster)
        if "://" not in config.artifacts:
            Path(config.artifacts).mkdir(parents=True, exist_ok=True)
        log = config.root / "mlflow-server.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(server_command(config, cluster), cwd=config.root,
                                    env=server_env(config, cluster, env), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
    except BaseException:
        if started_cluster:
            cluster.stop()
        raise
    server = TeamServer(config, proc, cluster, started_cluster, log)
    try:
        server.wait_healthy(timeout)
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def running_team_server(root: Path | str, *, auth: bool = False, host: str = DEFAULT_HOST, port: int = 0,
                        pg_port: int = 0, workers: int = 1, artifacts_destination: str = "",
                        auth_cache_ttl: int = DEFAULT_AUTH_CACHE_TTL_S, env: Mapping[str, str] | None = None,
                        timeout: float = HEALTH_TIMEOUT_S) -> Iterator[str]:
    """A team server under ``root`` for the length of a ``with`` block; yields its URI ``http://127.0.0.1:<port>``.

    ``port`` / ``pg_port`` 0 pick free ports. ``env`` (default: this process's) must hold the admin password and
    secret key when ``auth``. On exit the server's whole process group and the cluster it started are stopped."""
    config = ServerConfig(root=Path(root), auth=auth, host=host, port=port or free_port(),
                          pg_port=pg_port or free_port(), workers=workers,
                          artifacts_destination=artifacts_destination, auth_cache_ttl=auth_cache_ttl)
    server = start_team_server(config, env, timeout)
    try:
        yield server.uri
    finally:
        server.stop()


def serve(config: ServerConfig, announce=print) -> int:
    """Run the team server in the foreground until it exits or this process gets SIGTERM/SIGINT; stop it then
    (a signal during start-up also stops whatever was started so far)."""

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, terminate)
    server: TeamServer | None = None
    try:
        server = start_team_server(config)
        announce(describe(server))
        return server.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server is not None:
            server.stop()


def describe(server: TeamServer) -> str:
    config = server.config
    return (f"team server {server.uri} (auth {'on' if config.auth else 'off'}, PostgreSQL on 127.0.0.1:"
            f"{config.pg_port}, artifacts {config.artifacts}, {config.workers} worker(s), log {server.log})")


# ---------------------------------------------------------------- --check


@dataclass(frozen=True)
class ServerCheck:
    uri: str
    health: str
    version: str
    backend: str
    auth: str

    @property
    def ok(self) -> bool:
        return self.health == "OK"

    def lines(self) -> list[str]:
        return [f"{key}: {getattr(self, key)}" for key in ("uri", "health", "version", "backend", "auth")]


_STORE_KINDS = {"SqlStore": "sql (SqlStore); database engine: unknown (the server does not reveal it)",
                "FileStore": "file (FileStore)"}


def _check_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ServerError(f"--check {uri!r} is not allowed; expected the server's http:// or https:// address")
    return uri.rstrip("/")


def check_server(uri: str, username: str | None = None, password: str | None = None,
                 timeout: float = 10) -> ServerCheck:
    """What a server reveals about itself: ``/health``; ``/version`` (needs credentials when auth is on); the
    store type from ``/api/3.0/mlflow/server-info`` (public; it names SqlStore/FileStore, not the database
    engine); auth on when an API request without credentials gets 401."""
    import requests

    uri = _check_uri(uri)
    creds = (username, password) if username and password else None
    try:
        health = requests.get(f"{uri}/health", timeout=timeout)
    except requests.RequestException as err:
        reason = type(err).__name__
        return ServerCheck(uri, f"unreachable ({reason})", "unknown", "unknown", "unknown")
    health_text = "OK" if health.status_code == 200 and health.text.strip() == "OK" else \
        f"unhealthy (HTTP {health.status_code})"
    probe = requests.get(f"{uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=timeout)
    auth = {401: "on (basic-auth: requests without credentials get 401)"}.get(
        probe.status_code, "off" if probe.status_code < 500 else f"unknown (HTTP {probe.status_code})")
    version = requests.get(f"{uri}/version", auth=creds, timeout=timeout)
    if version.status_code == 200:
        version_text = version.text.strip()
    elif version.status_code == 401:
        version_text = ("unknown (needs credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
                        if creds is None else "unknown (the credentials given were refused: HTTP 401)")
    else:
        version_text = f"unknown (HTTP {version.status_code})"
    info = requests.get(f"{uri}/api/3.0/mlflow/server-info", timeout=timeout)
    try:
        store = info.json().get("store_type") if info.status_code == 200 else None
    except ValueError:  # not JSON: not an MLflow server-info answer
        store = None
    backend = _STORE_KINDS.get(store or "", "unknown" if info.status_code == 200 else
                               f"unknown (no server-info: HTTP {info.status_code})")
    return ServerCheck(uri, health_text, version_text, backend, auth)


# ---------------------------------------------------------------- users and permissions


def _auth_client(uri: str):
    from mlflow.server import get_app_client

    return get_app_client("basic-auth", tracking_uri=uri)


def check_admin_env(uri: str) -> str:
    """The server URI for user commands; they act as the admin named in MLFLOW_TRACKING_USERNAME/PASSWORD."""
    uri = _check_uri(uri) if uri else ""
    if not uri:
        raise ServerError("no server: pass --uri http://host:port or set MLFLOW_TRACKING_URI to the team server")
    if not (os.environ.get("MLFLOW_TRACKING_USERNAME") and os.environ.get("MLFLOW_TRACKING_PASSWORD")):
        raise ServerError("user commands act as an admin: set MLFLOW_TRACKING_USERNAME and "
                          "MLFLOW_TRACKING_PASSWORD to the server's admin credentials")
    return uri


def add_user(uri: str, username: str, password: str, admin: bool = False) -> None:
    """Create a basic-auth user (optionally an admin) on the server at ``uri``."""
    if not username.strip():
        raise ServerError("the user name is empty")
    if len(password) < MIN_PASSWORD_CHARS:
        raise ServerError(f"the password has {len(password)} characters; MLflow's basic-auth needs "
                          f">= {MIN_PASSWORD_CHARS}")
    client = _auth_client(uri)
    client.create_user(username, password)
    if admin:
        client.update_user_admin(username, True)


def resolve_experiment(uri: str, experiment: str) -> str:
    """An experiment's id from its name (or, failing that, from an id)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    if experiment.isdigit():
        with suppress(MlflowException):
            return client.get_experiment(experiment).experiment_id
    raise ServerError(f"experiment {experiment!r} not found on {uri}; give an existing experiment's name or id")


def grant(uri: str, username: str, experiment: str, permission: str) -> str:
    """Give ``username`` ``permission`` on ``experiment`` (name or id); returns the experiment id."""
    permission = permission.upper()
    if permission not in PERMISSIONS:
        raise ServerError(f"permission {permission!r} is not allowed; expected one of {', '.join(PERMISSIONS)}")
    experiment_id = resolve_experiment(uri, experiment)
    _auth_client(uri).grant_user_permission(username, "experiment", experiment_id, permission)
    return experiment_id


__all__ = ["ServerConfig", "ServerError", "ServerCheck", "TeamServer", "PostgresCluster", "running_team_server",
           "start_team_server", "serve", "check_server", "add_user", "grant", "default_root"]
