"""`server --check`: what a running server reveals about itself (health, version, store kind, whether auth is on),
over HTTPS trusting what MLflow clients trust (MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_INSECURE_TLS)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from prune_tracker.tracking.server.config import ServerError


def client_verify() -> str | bool:
    """What `requests` should verify a server's certificate against, the way MLflow's own client does."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").strip().lower() in ("1", "true"):
        return False
    return os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True


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


def check_uri(uri: str) -> str:
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

    uri = check_uri(uri)
    creds = (username, password) if username and password else None
    verify = client_verify()
    try:
        health = requests.get(f"{uri}/health", timeout=timeout, verify=verify)
    except requests.RequestException as err:
        reason = "TLS: " + type(err).__name__ if isinstance(err, requests.exceptions.SSLError) else type(err).__name__
        return ServerCheck(uri, f"unreachable ({reason})", "unknown", "unknown", "unknown")
    health_text = "OK" if health.status_code == 200 and health.text.strip() == "OK" else \
        f"unhealthy (HTTP {health.status_code})"
    probe = requests.get(f"{uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=timeout,
                         verify=verify)
    auth = {401: "on (basic-auth: requests without credentials get 401)"}.get(
        probe.status_code, "off" if probe.status_code < 500 else f"unknown (HTTP {probe.status_code})")
    version = requests.get(f"{uri}/version", auth=creds, timeout=timeout, verify=verify)
    if version.status_code == 200:
        version_text = version.text.strip()
    elif version.status_code == 401:
        version_text = ("unknown (needs credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
                        if creds is None else "unknown (the credentials given were refused: HTTP 401)")
    else:
        version_text = f"unknown (HTTP {version.status_code})"
    info = requests.get(f"{uri}/api/3.0/mlflow/server-info", timeout=timeout, verify=verify)
    try:
        store = info.json().get("store_type") if info.status_code == 200 else None
    except ValueError:  # not JSON: not an MLflow server-info answer
        store = None
    backend = _STORE_KINDS.get(store or "", "unknown" if info.status_code == 200 else
                               f"unknown (no server-info: HTTP {info.status_code})")
    return ServerCheck(uri, health_text, version_text, backend, auth)
