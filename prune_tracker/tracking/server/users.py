"""Users and permissions of a server started with --auth (MLflow's basic-auth app), acting as the admin named in
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD."""

from __future__ import annotations

import os
from contextlib import suppress

from prune_tracker.tracking.server.check import check_uri
from prune_tracker.tracking.server.config import MIN_PASSWORD_CHARS, PERMISSIONS, ServerError


def _auth_client(uri: str):
    from mlflow.server import get_app_client

    return get_app_client("basic-auth", tracking_uri=uri)


def check_admin_env(uri: str) -> str:
    """The server URI for user commands; they act as the admin named in MLFLOW_TRACKING_USERNAME/PASSWORD."""
    uri = check_uri(uri) if uri else ""
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
