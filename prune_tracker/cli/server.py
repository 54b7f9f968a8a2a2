"""The team server's commands: `server` (MLflow on PostgreSQL with proxied artifacts and optional basic-auth),
`users add|grant`, and `gc` (orphan runs -> KILLED)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from prune_tracker.cli.options import OneLineErrors, handle_errors, split_list

# ---------------------------------------------------------------- team server (prune_tracker/tracking/server/)

NEW_USER_PASSWORD_ENV = "PRUNE_TRACKER_NEW_USER_PASSWORD"


@click.command()
@click.option("--root", type=click.Path(file_okay=False, path_type=str), default="",
              help="server root: cluster, auth config, artifacts, logs (default ~/.prune-tracker/server; "
                   "/var/lib/prune-tracker/server as root; or $PRUNE_TRACKER_SERVER_ROOT)")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind (0.0.0.0: all)")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--pg-port", "--pg_port", "pg_port", type=click.IntRange(1, 65535), default=54329,
              show_default=True, help="port of the server's PostgreSQL cluster (127.0.0.1 only)")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--auth", is_flag=True, default=False, help="MLflow's basic-auth app; needs MLFLOW_AUTH_ADMIN_PASSWORD "
              "(>= 12 characters) and MLFLOW_FLASK_SERVER_SECRET_KEY in the environment")
@click.option("--artifacts-destination", "--artifacts_destination", "artifacts_destination", default="",
              help="where proxied artifacts go: a directory (default <root>/artifacts) or s3://bucket/prefix")
@click.option("--allowed-hosts", "--allowed_hosts", "allowed_hosts", default="",
              help="Host headers to accept when serving beyond localhost (mlflow server --allowed-hosts)")
@click.option("--default-permission", "--default_permission", "default_permission", default="READ",
              type=click.Choice(["READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS"], case_sensitive=False),
              show_default=True, help="with --auth: what users may do on experiments they were not granted")
@click.option("--auth-cache-ttl", "--auth_cache_ttl", "auth_cache_ttl", type=click.IntRange(min=0), default=60,
              show_default=True, help="with --auth: seconds a checked password stays cached per worker (0: check "
                                      "every request, MLflow's default; each check costs ~0.1 s of CPU)")
@click.option("--tls-cert", "--tls_cert", "tls_cert", default="", metavar="PEM",
              help="serve HTTPS only, with this certificate (clients trust a private one with "
                   "MLFLOW_TRACKING_SERVER_CERT_PATH); needs --tls-key")
@click.option("--tls-key", "--tls_key", "tls_key", default="", metavar="PEM", help="the certificate's private key")
@click.option("--insecure", is_flag=True, default=False,
              help="allow a non-loopback --host without --auth (anyone reaching the port reads and writes everything)")
@click.option("--check", "check_uri", default="", metavar="URI",
              help="only print a running server's health, version, backend kind and whether auth is on")
@handle_errors
def server(root: str, check_uri: str, **kw: Any) -> None:
    """MLflow tracking server on PostgreSQL with proxied artifacts (basic-auth with --auth, HTTPS with --tls-cert and
    --tls-key), its files private (umask 077); runs until Ctrl-C or SIGTERM, then stops the server and the
    PostgreSQL cluster it started."""
    from prune_tracker.tracking import server as team

    if check_uri:
        check = team.check_server(check_uri, os.environ.get("MLFLOW_TRACKING_USERNAME"),
                                  os.environ.get("MLFLOW_TRACKING_PASSWORD"))
        click.echo("\n".join(check.lines()))
        sys.exit(0 if check.ok else 1)
    kw["default_permission"] = kw["default_permission"].upper()
    for name in ("artifacts_destination", "tls_cert", "tls_key"):
        if kw[name] and "://" not in kw[name]:
            kw[name] = str(Path(kw[name]).expanduser().resolve())
    config = team.ServerConfig(root=Path(root).expanduser().resolve() if root else team.default_root(), **kw)
    team.validate_config(config)  # every refusal before anything is created
    if warning := team.exposure_warning(config):
        click.echo(warning, err=True)
    sys.exit(team.serve(config, announce=lambda text: print(text + "  (Ctrl-C stops it)", flush=True)))


@click.group(cls=OneLineErrors)
def users() -> None:
    """Users of a team server started with --auth (acting as the admin in MLFLOW_TRACKING_USERNAME/PASSWORD)."""


def _uri_option(fn: Callable) -> Callable:
    return click.option("--uri", default=lambda: os.environ.get("MLFLOW_TRACKING_URI", ""),
                        help="the team server (default: $MLFLOW_TRACKING_URI)")(fn)


@users.command(name="add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="make the new user an admin")
@_uri_option
@handle_errors
def users_add(name: str, admin: bool, uri: str) -> None:
    """Create user NAME; the password comes from $PRUNE_TRACKER_NEW_USER_PASSWORD or a prompt (>= 12 characters)."""
    from prune_tracker.tracking import server as team

    uri = team.check_admin_env(uri)
    password = os.environ.get(NEW_USER_PASSWORD_ENV) or click.prompt(
        f"password for {name}", hide_input=True, confirmation_prompt=True)
    team.add_user(uri, name, password, admin=admin)
    click.echo(f"user {name} created on {uri}{' (admin)' if admin else ''}")


@users.command(name="grant")
@click.argument("name")
@click.argument("experiment")
@click.argument("permission", type=click.Choice(["READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS", "DENY"],
                                                case_sensitive=False))
@_uri_option
@handle_errors
def users_grant(name: str, experiment: str, permission: str, uri: str) -> None:
    """Give user NAME PERMISSION on EXPERIMENT (name or id): READ, USE, EDIT (log runs), MANAGE (also grant),
    NO_PERMISSIONS or DENY."""
    from prune_tracker.tracking import server as team

    uri = team.check_admin_env(uri)
    experiment_id = team.grant(uri, name, experiment, permission.upper())
    click.echo(f"{name}: {permission.upper()} on experiment {experiment!r} (id {experiment_id})")




@click.command()
@click.option("--experiment-names", "--experiment_names", "experiment_names", default="",
              help="comma-separated experiments to check (default: every experiment)")
@click.option("--stale-after", "--stale_after", "stale_after", default="15m", show_default=True,
              help="a run of another host (or without owner tags) whose last heartbeat is older is an orphan: "
                   "90s, 15m, 2h, 1d (at least 3 heartbeat intervals), or off")
@click.option("--dry-run", "--dry_run", "dry_run", is_flag=True, help="only list the orphan runs")
@handle_errors
def gc(experiment_names: str, stale_after: str, dry_run: bool) -> None:
    """Mark orphan runs KILLED: RUNNING runs whose process is gone (seen from here) or silent for --stale-after, and
    SCHEDULED runs whose study's process is gone or whose study run ended."""
    from prune_tracker.tracking.gc import mark_orphans_killed, stale_after_seconds

    seconds = stale_after_seconds(stale_after)  # a bad value fails before any server call
    orphans = mark_orphans_killed(split_list(experiment_names) or None, seconds, dry_run=dry_run)
    verb = "orphan (dry run, not marked)" if dry_run else "marked KILLED"
    for orphan in orphans:
        click.echo(f"{verb}: {orphan.run_id} {orphan.experiment_name}/{orphan.run_name}: {orphan.reason}")
    click.echo(f"gc: {len(orphans)} orphan run(s) {'found' if dry_run else 'marked KILLED'}")


COMMANDS = (server, users, gc)
