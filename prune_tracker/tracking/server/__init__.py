"""The team tracking server: `mlflow server` on a local PostgreSQL cluster, proxied artifacts, optional basic-auth
and HTTPS.

A server root (``--root``; default ``~/.prune-tracker/server``, or ``/var/lib/prune-tracker/server`` for root, whose
home the ``postgres`` user cannot enter) holds everything the server writes, outside any checkout, private from
creation (the server runs with umask 077: folders 0700, files 0600; as root the root folder is 0710, group
``postgres``, so the cluster's user can pass through it and read nothing else)::

    postgres/data, postgres/socket, postgres/postgres.log   the cluster (owned by ``postgres`` when run as root)
    pgpass            libpq password file: the database password generated at ``initdb``
    basic_auth.ini    MLflow's auth config (auth database URI, admin user name, default permission; no secret)
    artifacts/        the default ``--artifacts-destination``
    mlflow-server.log

The admin password and the Flask secret key come from the environment only (``MLFLOW_AUTH_ADMIN_PASSWORD``,
``MLFLOW_FLASK_SERVER_SECRET_KEY``); nothing here has a default for them or writes them to a file. The database
password reaches the server through ``PGPASSFILE``, so no process argument and no URI carries a secret. A host
other than loopback is refused without ``--auth`` (unless ``--insecure``); ``--tls-cert/--tls-key`` make uvicorn
serve HTTPS only (clients trust a private certificate with ``MLFLOW_TRACKING_SERVER_CERT_PATH``).

Modules: config.py (settings, refusals, private files), postgres.py (the cluster), launch.py (start, stop, serve),
check.py (``--check``), users.py (``users add|grant``).
"""

from prune_tracker.tracking.server.check import ServerCheck, check_server, check_uri, client_verify
from prune_tracker.tracking.server.config import (
    ADMIN_PASSWORD_ENV,
    AUTH_ENV,
    DEFAULT_AUTH_CACHE_TTL_S,
    DEFAULT_HOST,
    DEFAULT_PG_PORT,
    DEFAULT_PORT,
    DEFAULT_WORKERS,
    MIN_PASSWORD_CHARS,
    PERMISSIONS,
    SECRET_KEY_ENV,
    ServerConfig,
    ServerError,
    check_auth_env,
    check_tls_files,
    default_root,
    exposure_warning,
    free_port,
    is_loopback,
    validate_config,
)
from prune_tracker.tracking.server.launch import (
    AUTH_DB,
    SERVER_LOG,
    TRACKING_DB,
    LocalServerOptions,
    TeamServer,
    describe,
    running_team_server,
    serve,
    server_command,
    start_team_server,
    stop_process_group,
)
from prune_tracker.tracking.server.postgres import PG_USER, PostgresCluster, find_pg_bin
from prune_tracker.tracking.server.users import add_user, check_admin_env, grant, resolve_experiment

__all__ = [
    "ADMIN_PASSWORD_ENV", "AUTH_DB", "AUTH_ENV", "DEFAULT_AUTH_CACHE_TTL_S", "DEFAULT_HOST", "DEFAULT_PG_PORT",
    "DEFAULT_PORT", "DEFAULT_WORKERS", "MIN_PASSWORD_CHARS", "PERMISSIONS", "PG_USER", "SECRET_KEY_ENV", "SERVER_LOG",
    "TRACKING_DB", "LocalServerOptions", "PostgresCluster", "ServerCheck", "ServerConfig", "ServerError",
    "TeamServer", "add_user", "check_admin_env", "check_auth_env", "check_server", "check_tls_files", "check_uri",
    "client_verify", "default_root", "describe", "exposure_warning", "find_pg_bin", "free_port", "grant",
    "is_loopback", "resolve_experiment", "running_team_server", "serve", "server_command", "start_team_server",
    "stop_process_group", "validate_config",
]
