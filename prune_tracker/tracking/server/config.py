"""How the team server is configured and what it refuses before anything is created: ports, workers, the auth
secrets, an exposure without auth (a non-loopback host), TLS files that do not exist or do not match; and the
private-file rules every file of the root is written with."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_PG_PORT = 54329
DEFAULT_WORKERS = 2
# MLflow checks a basic-auth password with scrypt on every request (0.1-0.2 s of CPU here) unless its credential
# cache is on; with it, a password change reaches the other workers within this many seconds.
DEFAULT_AUTH_CACHE_TTL_S = 60
MIN_PASSWORD_CHARS = 12  # MLflow's basic-auth password policy (admin and users alike)
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
AUTH_ENV = (ADMIN_PASSWORD_ENV, SECRET_KEY_ENV)
# Per-experiment permissions of MLflow 3.17's basic-auth app (mlflow.server.auth.permissions.ALL_PERMISSIONS).
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS", "DENY")
PRIVATE_UMASK = 0o077  # every file the server writes: 0600, every folder: 0700


class ServerError(ValueError):
    """The team server cannot be set up or started: one line naming what is wrong and what to do."""


def default_root() -> Path:
    """``$PRUNE_TRACKER_SERVER_ROOT``, else ``~/.prune-tracker/server`` (``/var/lib/prune-tracker/server`` as root)."""
    if os.environ.get("PRUNE_TRACKER_SERVER_ROOT"):
        return Path(os.environ["PRUNE_TRACKER_SERVER_ROOT"])
    if os.geteuid() == 0:
        return Path("/var/lib/prune-tracker/server")
    return Path.home() / ".prune-tracker" / "server"


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or a wildcard ("", 0.0.0.0 is not loopback either)


@dataclass(frozen=True)
class ServerConfig:
    """How to run the team server. ``artifacts_destination`` "" means ``<root>/artifacts``; any URI MLflow can
    write (``s3://bucket/prefix``, ...) is passed to ``mlflow server --artifacts-destination`` as is. ``tls_cert`` /
    ``tls_key``: PEM files; the server then speaks HTTPS only. ``insecure``: serve a non-loopback host without auth
    on purpose."""

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
    tls_cert: str = ""
    tls_key: str = ""
    insecure: bool = False

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def uri(self) -> str:
        """The address a client on this machine uses (a wildcard bind is reached through loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        scheme = "https" if self.tls else "http"
        return f"{scheme}://[{host}]:{self.port}" if ":" in host else f"{scheme}://{host}:{self.port}"

    @property
    def artifacts(self) -> str:
        return self.artifacts_destination or str(self.root / "artifacts")


def validate_config(config: ServerConfig) -> None:
    """Every check that needs nothing created: ServerError (one line) for the first bad value."""
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
    check_exposure(config)
    check_tls_files(config.tls_cert, config.tls_key)


def check_exposure(config: ServerConfig) -> None:
    """A server reachable from other machines without --auth lets anyone read and write everything: refused
    unless ``insecure``."""
    if not is_loopback(config.host) and not config.auth and not config.insecure:
        raise ServerError(f"host={config.host!r} without --auth would let anyone who reaches port {config.port} "
                          "read and write every experiment; add --auth (with --tls-cert/--tls-key or a TLS reverse "
                          "proxy), or pass --insecure to serve it open on purpose")


def exposure_warning(config: ServerConfig) -> str | None:
    """What a started server should warn about: an open non-loopback server, or passwords without TLS."""
    if is_loopback(config.host):
        return None
    if not config.auth:
        return (f"warning: serving on {config.host} without --auth (--insecure): anyone reaching port "
                f"{config.port} can read and write every experiment")
    if not config.tls:
        return (f"warning: --auth on {config.host} without --tls-cert: passwords cross the network in clear "
                "unless a TLS reverse proxy is the only way in")
    return None


def check_tls_files(cert: str, key: str) -> None:
    """Both or neither; each an existing file; the key matches the certificate (ssl loads them as uvicorn will)."""
    if bool(cert) != bool(key):
        given, missing = ("tls_cert", "--tls-key") if cert else ("tls_key", "--tls-cert")
        raise ServerError(f"{given} needs {missing} too: HTTPS takes the certificate and its private key")
    if not cert:
        return
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        if not Path(path).is_file():
            raise ServerError(f"{name}={path!r} is not allowed; no such file (expected a PEM file)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as err:
        raise ServerError(f"tls_cert={cert!r} and tls_key={key!r} cannot serve HTTPS: {err}") from None


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


# ---------------------------------------------------------------- private files


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """umask 077 for the block: what this process and the processes it starts meanwhile create is 0600 / 0700."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def write_private(path: Path, text: str) -> None:
    """Write `path` 0600 from creation (an existing file is truncated and made 0600 before the text goes in)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)


def open_private_log(path: Path):
    """`path` opened for appending, 0600 from creation."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


# ---------------------------------------------------------------- small helpers


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = DEFAULT_HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def last_error_line(text: str) -> str:
    """The most telling line of a tool's output: the last one that names an error, else the last one."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"error|exception|fatal|refus|denied|could not", line, re.IGNORECASE):
            return line
    return lines[-1] if lines else "(no output)"
