#!/usr/bin/env bash
# CI entry of the cloud-less rehearsal's self-test (tests/rehearsal/README.md): system
# packages, then the harness's timed smoke test (Docker engine, VM image, fake cloud,
# four systemd containers over SSH, wheelhouse, tansu, nx-27017), torn down at the end.
# Run as root from a clone whose .venv has requirements.txt installed (`make venv`).
#   sudo scripts/rehearsal-smoke.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-system-packages.sh
PY="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ]; then
  echo "rehearsal-smoke: $PY not found: run \`make venv\` first (or set PYTHON)" >&2
  exit 1
fi
exec "$PY" -m tests.rehearsal.harness smoke --timings "${IOT_REHEARSAL_TIMINGS:-/tmp/iot-rehearsal-timings.json}" "$@"
