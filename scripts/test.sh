#!/usr/bin/env bash
# The test suite: set up (or reuse) the environment, lint, then run every test (GPU ones skip
# here), then every benchmark once with timing disabled, so the benchmarks never rot.
source "$(dirname "$0")/env.sh"
"$PY" -m ruff check .
"$PY" -m pytest -q tests "$@"
exec "$PY" -m pytest -q benchmarks --benchmark-disable
