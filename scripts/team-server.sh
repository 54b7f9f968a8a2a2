#!/usr/bin/env bash
# The team tracking server in plain commands, for a systemd unit or a container entrypoint: what
# `prune-tracker server` does (same root layout, so either one can run a root the other created), needing only
# PostgreSQL's server binaries and a Python with mlflow[auth] and psycopg[binary] (boto3 too for s3://).
#
# Usage: scripts/team-server.sh [--root DIR] [--host H] [--port P] [--pg-port P] [--workers N]
#                               [--artifacts-destination DIR|s3://bucket/prefix] [--allowed-hosts LIST]
#                               [--default-permission READ|USE|EDIT|MANAGE|NO_PERMISSIONS] [--auth]
#                               [--auth-cache-ttl SECONDS (default 60; 0: check the password on every request)]
# --auth needs MLFLOW_AUTH_ADMIN_PASSWORD (>= 12 characters) and MLFLOW_FLASK_SERVER_SECRET_KEY in the environment.
# PYTHON (default python3): the interpreter with mlflow. PG_BIN: PostgreSQL's bin directory (default: the newest
# /usr/lib/postgresql/*/bin). Root default: $PRUNE_TRACKER_SERVER_ROOT, ~/.prune-tracker/server, or
# /var/lib/prune-tracker/server as root. Runs in the foreground; SIGTERM or SIGINT stops the server's process group
# and the PostgreSQL cluster this script started.
set -euo pipefail

die() { echo "Error: $*" >&2; exit 2; }
usage() { sed -n '6,14p' "$0" | sed 's/^# \{0,1\}//'; }

root=${PRUNE_TRACKER_SERVER_ROOT:-}
host=127.0.0.1 port=5000 pg_port=54329 workers=2 artifacts="" allowed_hosts="" default_permission=READ auth=0
auth_cache_ttl=60
PYTHON=${PYTHON:-python3}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --root) root=${2:?--root needs a value}; shift 2 ;;
    --host) host=${2:?--host needs a value}; shift 2 ;;
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --pg-port) pg_port=${2:?--pg-port needs a value}; shift 2 ;;
    --workers) workers=${2:?--workers needs a value}; shift 2 ;;
    --artifacts-destination) artifacts=${2:?--artifacts-destination needs a value}; shift 2 ;;
    --allowed-hosts) allowed_hosts=${2:?--allowed-hosts needs a value}; shift 2 ;;
    --default-permission) default_permission=${2:?--default-permission needs a value}; shift 2 ;;
    --auth) auth=1; shift ;;
    --auth-cache-ttl) auth_cache_ttl=${2:?--auth-cache-ttl needs a value}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1; allowed: --root --host --port --pg-port --workers --artifacts-destination" \
           "--allowed-hosts --default-permission --auth --auth-cache-ttl" ;;
  esac
done
for value in "$port" "$pg_port" "$workers"; do
  [[ $value =~ ^[1-9][0-9]*$ ]] || die "$value is not allowed for --port/--pg-port/--workers; expected a positive integer"
done
[[ $auth_cache_ttl =~ ^[0-9]+$ ]] || die "--auth-cache-ttl $auth_cache_ttl is not allowed; expected seconds >= 0"
case "$default_permission" in READ|USE|EDIT|MANAGE|NO_PERMISSIONS) ;;
  *) die "--default-permission $default_permission is not allowed; expected READ, USE, EDIT, MANAGE or NO_PERMISSIONS" ;;
esac
if (( auth )); then
  [[ -n ${MLFLOW_AUTH_ADMIN_PASSWORD:-} && -n ${MLFLOW_FLASK_SERVER_SECRET_KEY:-} ]] ||
    die "--auth needs MLFLOW_AUTH_ADMIN_PASSWORD and MLFLOW_FLASK_SERVER_SECRET_KEY set in the environment"
  (( ${#MLFLOW_AUTH_ADMIN_PASSWORD} >= 12 )) ||
    die "MLFLOW_AUTH_ADMIN_PASSWORD has ${#MLFLOW_AUTH_ADMIN_PASSWORD} characters; MLflow's basic-auth needs >= 12"
else
  unset MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
fi
if [[ -z $root ]]; then
  if [[ $EUID -eq 0 ]]; then root=/var/lib/prune-tracker/server; else root=$HOME/.prune-tracker/server; fi
fi
mkdir -p "$root"
root=$(cd "$root" && pwd)
artifacts=${artifacts:-$root/artifacts}
[[ $artifacts == *://* ]] || { mkdir -p "$artifacts"; artifacts=$(cd "$artifacts" && pwd); }

PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[[ -x ${PG_BIN}/initdb && -x ${PG_BIN}/pg_ctl ]] ||
  die "PostgreSQL server binaries not found; apt-get update && apt-get install -y postgresql, or set PG_BIN"
as_pg() { if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pgdir=$root/postgres data=$root/postgres/data sock=$root/postgres/socket pglog=$root/postgres/postgres.log
passfile=$root/pgpass
mkdir -p -m 700 "$pgdir" "$sock"
if [[ $EUID -eq 0 ]]; then
  chown postgres: "$pgdir" "$sock"
  as_pg test -w "$pgdir" || die "the postgres user cannot enter $pgdir; choose a --root every user may traverse"
fi

# First use: a cluster owned by this root, superuser prune_tracker with a generated password (kept in pgpass, 0600).
if [[ ! -f $data/PG_VERSION ]]; then
  password=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))')
  pwfile=$pgdir/initdb-password
  (umask 077; printf '%s\n' "$password" > "$pwfile")
  [[ $EUID -ne 0 ]] || chown postgres "$pwfile"
  as_pg "$PG_BIN/initdb" -D "$data" -U prune_tracker --pwfile="$pwfile" --auth-host=scram-sha-256 \
    --auth-local=peer -E UTF8 --no-instructions >/dev/null || { rm -f "$pwfile"; die "initdb failed"; }
  rm -f "$pwfile"
  (umask 077; printf '127.0.0.1:*:*:prune_tracker:%s\n' "$password" > "$passfile")
fi
[[ -f $passfile ]] || die "$passfile is missing for the existing cluster in $data; restore it or start a new root"
export PGPASSFILE=$passfile

started_pg=0 server_pid=""
stop_all() {
  trap - EXIT INT TERM
  if [[ -n $server_pid ]]; then
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$server_pid" 2>/dev/null || true
  fi
  if (( started_pg )); then as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null || true; fi
}
trap stop_all EXIT
trap 'exit 0' INT TERM

if as_pg "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
  running_port=$(sed -n 4p "$data/postmaster.pid")
  [[ $running_port == "$pg_port" ]] || die "the cluster in $data already runs on port $running_port, not $pg_port"
else
  as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$pglog" -o "-p $pg_port -k $sock -c listen_addresses=127.0.0.1" \
    -w -t 60 start >/dev/null || die "starting PostgreSQL failed (log: $pglog)"
  started_pg=1
fi

psql_q() { "$PG_BIN/psql" -h 127.0.0.1 -p "$pg_port" -U prune_tracker -d postgres -tAc "$1"; }
ensure_db() {
  [[ $(psql_q "SELECT 1 FROM pg_database WHERE datname = '$1'") == 1 ]] || psql_q "CREATE DATABASE $1" >/dev/null
}
db_uri() { echo "postgresql://prune_tracker@127.0.0.1:$pg_port/$1"; }

ensure_db mlflow
"$PYTHON" -m mlflow db upgrade "$(db_uri mlflow)" >>"$root/mlflow-server.log" 2>&1 ||
  die "mlflow db upgrade failed (log: $root/mlflow-server.log)"
server_args=(--backend-store-uri "$(db_uri mlflow)" --artifacts-destination "$artifacts" --host "$host"
             --port "$port" --workers "$workers")
[[ -z $allowed_hosts ]] || server_args+=(--allowed-hosts "$allowed_hosts")
if (( auth )); then
  ensure_db mlflow_auth
  "$PYTHON" -m mlflow.server.auth db upgrade --url "$(db_uri mlflow_auth)" >>"$root/mlflow-server.log" 2>&1 ||
    die "the auth database migration failed (log: $root/mlflow-server.log)"
  (umask 077; cat > "$root/basic_auth.ini" <<EOF
[mlflow]
default_permission = $default_permission
database_uri = $(db_uri mlflow_auth)
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = $auth_cache_ttl
EOF
  )
  export MLFLOW_AUTH_CONFIG_PATH=$root/basic_auth.ini
  server_args+=(--app-name basic-auth)
fi
unset MLFLOW_TRACKING_URI MLFLOW_RUN_ID MLFLOW_EXPERIMENT_ID
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

# Its own process group (setsid), so stopping it reaches the workers and helpers too.
setsid "$PYTHON" -m mlflow server "${server_args[@]}" >>"$root/mlflow-server.log" 2>&1 &
server_pid=$!
case "$host" in 0.0.0.0|"") url_host=127.0.0.1 ;; ::) url_host="[::1]" ;; *:*) url_host="[$host]" ;; *) url_host=$host ;; esac
url="http://$url_host:$port"
for _ in $(seq 360); do
  kill -0 "$server_pid" 2>/dev/null || die "mlflow server exited (log: $root/mlflow-server.log)"
  if "$PYTHON" -c "import sys, urllib.request as u; sys.exit(u.urlopen('$url/health', timeout=2).read() != b'OK')" \
      2>/dev/null; then
    echo "team server $url (auth $( (( auth )) && echo on || echo off ), PostgreSQL on 127.0.0.1:$pg_port," \
         "artifacts $artifacts, log $root/mlflow-server.log)"
    wait "$server_pid" || exit $?
    exit 0
  fi
  sleep 0.25
done
die "mlflow server at $url not healthy after 90 s (log: $root/mlflow-server.log)"
