#!/usr/bin/env bash
# The team tracking server for a systemd unit or a container entrypoint: `prune-tracker server` itself (one launcher:
# the same checks, umask 077, TLS, PostgreSQL set-up and shutdown), run with the Python that has prune-tracker
# installed with its [server] extra.
#
# Usage: scripts/team-server.sh [prune-tracker server options]   (see `prune-tracker server --help`)
# PYTHON (default python3): that interpreter. --auth needs MLFLOW_AUTH_ADMIN_PASSWORD (>= 12 characters) and
# MLFLOW_FLASK_SERVER_SECRET_KEY in the environment. Runs in the foreground; SIGTERM or SIGINT stops the server's
# process group and the PostgreSQL cluster it started.
set -euo pipefail
exec "${PYTHON:-python3}" -m prune_tracker.cli server "$@"
