#!/usr/bin/env bash
# The main job: set up (or reuse) the environment, then train a GPT on the embedded Shakespeare
# corpus (the small CPU preset here, the 6-layer GPU preset on a GPU), evaluate, checkpoint and
# print a sample. Arguments go to fastgpt.train (--max_iters 500, --resume, a config file, ...).
source "$(dirname "$0")/env.sh"
exec "$PY" -m fastgpt.train "$@"
