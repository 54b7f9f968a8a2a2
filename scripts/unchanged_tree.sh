#!/usr/bin/env bash
# Run a command and fail if it added, changed or removed anything in the checkout (ignored files included),
# apart from Python's bytecode caches and the virtualenv, or wrote anything under $HOME (files modified while it
# ran: tests/conftest.py points HOME, MPLCONFIGDIR and Ray's temp dir at the session's directory). `make test` runs
# the suite through it.
set -uo pipefail
snapshot() {
  git status --porcelain --ignored --untracked-files=all 2>/dev/null \
    | grep -v -e '__pycache__/' -e '^!! \.venv/' -e '^!! [^/]*\.egg-info/' | sort
}
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then exec "$@"; fi
before=$(snapshot)
marker=$(mktemp)
"$@"
status=$?
after=$(snapshot)
# HOME_WRITES_IGNORED: a regex of paths other programs write while the suite runs (a desktop, an editor)
home_writes=$(find "$HOME" -xdev -newer "$marker" -type f 2>/dev/null \
  | grep -Ev "${HOME_WRITES_IGNORED:-/\.cache/pip/}" | head -20)
rm -f "$marker"
if [ -n "$home_writes" ]; then
  echo "FAILED: the command wrote under \$HOME:" >&2
  echo "$home_writes" >&2
  [ "$status" -eq 0 ] && status=1
fi
if [ "$before" != "$after" ]; then
  echo "FAILED: the command changed the checkout:" >&2
  diff <(echo "$before") <(echo "$after") | grep '^[<>]' | head -20 >&2
  [ "$status" -eq 0 ] && status=1
fi
exit "$status"
