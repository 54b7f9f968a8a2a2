#!/usr/bin/env bash
# Run a command and fail if it added, changed or removed anything in the checkout (ignored files included),
# apart from Python's bytecode caches and the virtualenv. `make test` runs the suite through it.
set -uo pipefail
snapshot() {
  git status --porcelain --ignored --untracked-files=all 2>/dev/null \
    | grep -v -e '__pycache__/' -e '^!! \.venv/' -e '^!! [^/]*\.egg-info/' | sort
}
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then exec "$@"; fi
before=$(snapshot)
"$@"
status=$?
after=$(snapshot)
if [ "$before" != "$after" ]; then
  echo "FAILED: the command changed the checkout:" >&2
  diff <(echo "$before") <(echo "$after") | grep '^[<>]' | head -20 >&2
  [ "$status" -eq 0 ] && status=1
fi
exit "$status"
