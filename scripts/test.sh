#!/usr/bin/env bash
# The test suite: set up (or reuse) the environment, then run every test (GPU ones skip here).
source "$(dirname "$0")/env.sh"
exec "$PY" -m pytest -q tests "$@"
