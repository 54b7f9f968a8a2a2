"""Starting and stopping the team server: the PostgreSQL cluster, the migrations, `mlflow server` in its own process
group (HTTPS with TLS files), everything under umask 077."""

from __future__ import annotations

import os
import shlex
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from prune_tracker.tracking.server.config import (
    AUTH_ENV,
    DEFAULT_AUTH_CACHE_TTL_S,
    DEFAULT_HOST,
    ServerConfig,
    ServerError,
    check_auth_env,
    free_port,
    last_error_line,
    open_private_log,
    port_in_use,
    private_umask,
    validate_config,
    write_private,
)
from prune_tracker.tracking.server.postgres import PostgresCluster

HEALTH_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
TRACKING_DB = "mlflow"
AUTH_DB = "mlflow_auth"
SERVER_LOG = "mlflow-server.log"


def write_auth_config(config: ServerConfig, cluster: PostgresCluster) -> Path:
    """``<root>/basic_auth.ini`` (0600) for ``MLFLOW_AUTH_CONFIG_PATH``: database, admin name, default permission,
    the credential cache's TTL. No password: MLflow reads the admin's from ``MLFLOW_AUTH_ADMIN_PASSWORD`` when it
    first creates the admin."""
    path = config.root / "basic_auth.ini"
    write_private(path, "[mlflow]\n"
                        f"default_permission = {config.default_permission}\n"
                        f"database_uri = {cluster.uri(AUTH_DB)}\n"
                        f"admin_username = {config.admin_username}\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                        f"auth_cache_ttl_seconds = {config.auth_cache_ttl}\n")
    return path


def _python_step(args: list[str], env: Mapping[str, str], what: str, timeout: float = 300) -> None:
    try:
        done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=dict(env),
                              timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ServerError(f"{what} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise ServerError(f"{what} failed: {last_error_line(done.stderr + done.stdout)}")


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
    """`mlflow server` on uvicorn (MLflow 3.17's default); with TLS, uvicorn serves HTTPS only."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", cluster.uri(TRACKING_DB),
           "--artifacts-destination", config.artifacts, "--host", config.host, "--port", str(config.port),
           "--workers", str(config.workers)]  # fmt: skip
    if config.auth:
        cmd += ["--app-name", "basic-auth"]
    if config.allowed_hosts:
        cmd += ["--allowed-hosts", config.allowed_hosts]
    if config.tls:
        cmd += ["--uvicorn-opts", shlex.join(["--ssl-certfile", config.tls_cert, "--ssl-keyfile", config.tls_key])]
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


def _probe_context(config: ServerConfig) -> ssl.SSLContext | None:
    """For the health probe of our own server: trust exactly its certificate (as a trust anchor, so a CA-signed one
    works too), whatever names it carries (the probe goes to the loopback address). It sends no credentials."""
    if not config.tls:
        return None
    context = ssl.create_default_context(cafile=config.tls_cert)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _healthy(uri: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2, context=context) as resp:
            return resp.status == 200 and resp.read().strip() == b"OK"
    except OSError:
        return False


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
        deadline, context = time.monotonic() + timeout, _probe_context(self.config)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"mlflow server exited with {self.process.returncode}: "
                                  f"{last_error_line(self.log.read_text(errors='replace'))} (log: {self.log})")
            if _healthy(self.uri, context):
                return
            time.sleep(0.25)
        raise ServerError(f"mlflow server at {self.uri} not healthy after {timeout:.0f} s (log: {self.log})")


def start_team_server(config: ServerConfig, env: Mapping[str, str] | None = None,
                      timeout: float = HEALTH_TIMEOUT_S) -> TeamServer:
    """Set up (first use: ``initdb``, databases, migrations) and start the cluster and ``mlflow server`` in its
    own process group; return once ``/health`` answers. Everything is checked before anything is created, and
    created under umask 077 (the server's own files, PostgreSQL's, the artifacts the server writes later).
    Whatever this started is stopped again on failure."""
    env = dict(os.environ if env is None else env)
    validate_config(config)
    if config.auth:
        check_auth_env(env)
    if port_in_use(config.port):
        raise ServerError(f"port={config.port} is already in use on 127.0.0.1; choose another --port")
    with private_umask():
        cluster = PostgresCluster(config.root, config.pg_port)
        cluster.init()
        started_cluster = cluster.start()
        try:
            proc, log = _launch(config, cluster, env)
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


def _launch(config: ServerConfig, cluster: PostgresCluster, env: Mapping[str, str]
            ) -> tuple[subprocess.Popen, Path]:
    """Migrate, write the auth config, create the artifacts folder (0700) and start `mlflow server` (umask 077)."""
    migrate(config, cluster, {**env, **cluster.env()})
    if config.auth:
        write_auth_config(config, cluster)
    if "://" not in config.artifacts:
        Path(config.artifacts).mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(config.artifacts, 0o700)
    log = config.root / SERVER_LOG
    with open_private_log(log) as out:
        proc = subprocess.Popen(server_command(config, cluster), cwd=config.root,
                                env=server_env(config, cluster, env), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, umask=0o077)  # fmt: skip
    return proc, log


@dataclass(frozen=True)
class LocalServerOptions:
    """What a caller of :func:`running_team_server` chooses (tests, benchmarks); ``port`` / ``pg_port`` 0 pick free
    ports; ``tls`` (certificate, key) serves HTTPS."""

    auth: bool = False
    host: str = DEFAULT_HOST
    port: int = 0
    pg_port: int = 0
    workers: int = 1
    artifacts_destination: str = ""
    auth_cache_ttl: int = DEFAULT_AUTH_CACHE_TTL_S
    tls: tuple[str, str] | None = None

    def config(self, root: Path | str) -> ServerConfig:
        cert, key = self.tls or ("", "")
        return ServerConfig(root=Path(root), auth=self.auth, host=self.host, port=self.port or free_port(),
                            pg_port=self.pg_port or free_port(), workers=self.workers,
                            artifacts_destination=self.artifacts_destination, auth_cache_ttl=self.auth_cache_ttl,
                            tls_cert=cert, tls_key=key)


@contextmanager
def running_team_server(root: Path | str, options: LocalServerOptions = LocalServerOptions(),
                        env: Mapping[str, str] | None = None, timeout: float = HEALTH_TIMEOUT_S) -> Iterator[str]:
    """A team server under ``root`` for the length of a ``with`` block; yields its URI ``http(s)://127.0.0.1:<port>``.

    ``env`` (default: this process's) must hold the admin password and secret key when ``options.auth``. On exit
    the server's whole process group and the cluster it started are stopped."""
    server = start_team_server(options.config(root), env, timeout)
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
    return (f"team server {server.uri} (auth {'on' if config.auth else 'off'}, TLS {'on' if config.tls else 'off'}, "
            f"PostgreSQL on 127.0.0.1:{config.pg_port}, artifacts {config.artifacts}, {config.workers} worker(s), "
            f"log {server.log})")
