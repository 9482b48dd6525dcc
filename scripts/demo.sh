#!/usr/bin/env bash
# The main job: set up (or reuse) the environment, then train a small GPT on Shakespeare.
source "$(dirname "$0")/env.sh"
exec "$PY" -m fastgpt.demo "$@"
