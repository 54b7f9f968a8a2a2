#!/usr/bin/env bash
# Render an HTML report (or a page such as the MLflow UI at http://127.0.0.1:5000/#/experiments/1/runs) in
# headless Chromium and save a PNG screenshot. Pages are given 15 s of virtual time to run their scripts.
# Usage: scripts/screenshot_report.sh REPORT.html|URL OUT.png [WIDTHxHEIGHT]   (default 1280x4000)
# Needs chromium (apt-get update && apt-get install -y chromium). No network is used by the page itself.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 REPORT.html OUT.png [WIDTHxHEIGHT]" >&2
  exit 2
fi
case "$1" in
  http://*|https://*) page="$1" ;;
  *) [[ -f "$1" ]] || { echo "no such report: $1" >&2; exit 1; }; page="file://$(realpath "$1")" ;;
esac
out=$(realpath -m "$2")
size=${3:-1280x4000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z "$browser" ]]; then
  echo "chromium not found: apt-get update && apt-get install -y chromium" >&2
  exit 1
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
mkdir -p "$(dirname "$out")"
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --screenshot="$out" --window-size="${size/x/,}" \
  --virtual-time-budget=15000 "$page" >/dev/null 2>&1
[[ -s "$out" ]] || { echo "chromium wrote no screenshot to $out" >&2; exit 1; }
echo "$out"
