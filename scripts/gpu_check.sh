#!/usr/bin/env bash
# The GPU check: the one call on a lent GPU machine (torch 2.11 and triton 3.6 preinstalled, no
# network) that verifies, tunes and measures fastgpt against its peers, most valuable results
# first. Every stage has a time budget (printed first) and its own timeout; time a stage leaves
# unused passes to the next, and the whole run stops by FASTGPT_GPU_BUDGET (480 s). A stage
# that fails or hangs costs only itself: after each one $OUT is brought up to date, so a
# call killed at any point still returns what the earlier stages produced.
#
# $OUT (the device tool returns at most 8 files) ends with 6:
#   summary.json            every stage's status, seconds and budget; machine, driver, versions;
#                           ceilings; test and peer outcomes (what was skipped and why)
#   <sm>-<device>.json      the tuning table scripts/tune.py measured (-> kernels/tuned/)
#   bench.json, bench.md, bench.png   every benchmark row, as a table and a speedup chart
#   logs.tar.gz             each stage's log, the junit files, the ceilings, the stage table
# Then: python scripts/harvest.py <that folder> (README, "On a GPU machine").
#
#   bash scripts/gpu_check.sh              # on the GPU machine, OUT set by the device tool
#   bash scripts/gpu_check.sh --dry-run    # here: every stage on the CPU with tiny shapes
#                                          # (Triton interpreter; what needs CUDA says so)
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
WORK=$(mktemp -d)
LOGS="$WORK/logs"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 FASTGPT_BENCH_SHORT=1
export FASTGPT_CEILINGS="$WORK/ceilings.json" FASTGPT_BENCH_ROWS="$WORK/bench_rows.jsonl"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$WORK/triton_cache}"
TOTAL="${FASTGPT_GPU_BUDGET:-480}"
CORES=$(nproc 2>/dev/null || echo 2)
SCALE=1
if [ "$DRY" = 1 ]; then
  export FASTGPT_BENCH_DRY=1
  DRY_SELECT=(-k "not bwd")  # the dry run times forward cases only: it tests this script
  SCALE="${FASTGPT_GPU_SCALE:-3}"  # a 2-core CPU and the interpreter: every limit x3
  TOTAL=$((TOTAL * SCALE))
fi

# name:budget seconds, in the order they run (the CUDA build runs beside tune, peers and e2e).
STAGES=(env:15 carry:5 install:35 ceilings:15 tune:85 peers:75 e2e:115 build-wait:5 backends:10 tests:60 qkv:15 mlp:10 memcheck:25 pack:10)
T0=$(date +%s)
SLACK=0
echo "== gpu_check$([ "$DRY" = 1 ] && echo " --dry-run (limits x$SCALE)"): total budget ${TOTAL} s on ${CORES} cores; stages (budget s):"
for s in "${STAGES[@]}"; do printf '   %-11s %4s s\n' "${s%%:*}" "${s##*:}"; done
printf '   %-11s %4s s  (in the background, beside tune, peers and e2e)\n' build 300
printf 'stage\tbudget\tseconds\trc\tstatus\tnote\n' > "$WORK/stages.tsv"

budget_of() { local s; for s in "${STAGES[@]}"; do [ "${s%%:*}" = "$1" ] && echo "${s##*:}"; done; }
now() { date +%s; }
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$WORK/stages.tsv"; }
pack() {  # bring $OUT up to date: summary.json and logs.tar.gz; with "render", bench.{json,md,png}
  DRY=$DRY ELAPSED=$(($(now) - T0)) timeout 60 "$PY" scripts/gpu_summary.py "$WORK" "$OUT" "$@" >> "$LOGS/pack.log" 2>&1 \
    || echo "   (pack failed: see pack.log)"
}
skip() {  # skip NAME WHY
  echo "== $1: skipped: $2"
  record "$1" "$(budget_of "$1")" 0 - skipped "$2"
}
# stage NAME CMD...: run with a timeout of its budget plus the slack so far, capped by the
# deadline (a shell function runs as `bash -c NAME`: export -f it). RENDER=1: re-render bench.*.
stage() {
  local name=$1 budget start limit left rc status
  shift
  budget=$(budget_of "$name")
  start=$(now)
  left=$((T0 + TOTAL - start - 10))
  limit=$((budget * SCALE + SLACK))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    skip "$name" "no time left (${left} s before the deadline)"
    return
  fi
  echo "== $name (budget ${budget} s, limit ${limit} s, at $((start - T0)) s)"
  timeout -k 5 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  local took=$(($(now) - start))
  status=ok
  [ "$rc" -ne 0 ] && status=failed
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && status=timeout
  SLACK=$((limit - took))
  [ "$SLACK" -lt 0 ] && SLACK=0
  echo "   $status (rc $rc) in ${took} s"
  tail -n "${TAIL_LINES:-4}" "$LOGS/$name.log" | sed 's/^/   | /'
  record "$name" "$budget" "$took" "$rc" "$status" ""
  if [ "${RENDER:-0}" = 1 ]; then pack render; else pack; fi
}

# --- env: the machine and the versions that run here ------------------------------------------
stage env bash -c "nvidia-smi || echo 'nvidia-smi: not found'; command -v compute-sanitizer nvcc; \
  '$PY' scripts/gpu_summary.py --machine '$WORK/machine.json'"

# --- carry: peer wheels and CUTLASS headers that scripts/gpu_carry.sh packed beside the tree ---
carry() {
  if [ ! -d .gpu_carry ]; then echo "no .gpu_carry folder: run scripts/gpu_carry.sh and carry .gpu_carry"; return 0; fi
  cat .gpu_carry/MANIFEST.txt 2>/dev/null
  if ls .gpu_carry/whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .gpu_carry/whl/*.whl || return 1
    echo "installed into $WORK/site: $(ls .gpu_carry/whl)"
  fi
  if [ -f .gpu_carry/cutlass-include.tar.gz ]; then
    mkdir -p "$WORK/cutlass" && tar -xzf .gpu_carry/cutlass-include.tar.gz -C "$WORK/cutlass" || return 1
    echo "CUTLASS headers in $WORK/cutlass/include"
  fi
}
export -f carry
export PY WORK
stage carry bash -c carry
[ -d "$WORK/site" ] && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$WORK/cutlass/include" ] && export FASTGPT_CUTLASS_DIR="$WORK/cutlass"

# --- install: fastgpt importable (CPU part of fastgpt._C); the CUDA build runs in the background
BUILD_PID=
if [ "$DRY" = 1 ]; then
  skip install "dry run: uses this environment's fastgpt"
  skip build "needs CUDA: the local GPU's arch (CI builds fastgpt._C for sm_80/sm_90 in env.sh)"
else
  stage install env FASTGPT_SKIP_CUDA_BUILD=1 MAX_JOBS="$CORES" "$PY" -m pip install --no-build-isolation --no-deps -e .
  if ! (cd /tmp && "$PY" -c "import fastgpt.kernels.tuning") 2> /dev/null; then
    # The install failed (the image's setuptools, say). What it would have given, so that the
    # rest still runs: the tree on the path, and kernels/ found as fastgpt.kernels.
    mkdir -p "$WORK/shim"
    cat > "$WORK/shim/sitecustomize.py" << EOF
import importlib.util, sys
class _KernelsFinder:  # pyproject.toml's package-dir mapping: fastgpt.kernels is kernels/
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "fastgpt.kernels":
            return importlib.util.spec_from_file_location(name, "$PWD/kernels/__init__.py", submodule_search_locations=["$PWD/kernels"])
sys.meta_path.insert(0, _KernelsFinder)
sys.path.append("$PWD")
EOF
    export PYTHONPATH="$WORK/shim${PYTHONPATH:+:$PYTHONPATH}"
    (cd /tmp && "$PY" -c "import fastgpt.kernels.tuning") && record install-fallback 0 0 0 ok "fastgpt imported from the tree ($WORK/shim/sitecustomize.py)"
  fi
  BUILD_START=$(now)
  # Into a build folder of its own; its .so replaces the CPU-only one (atomically) only once no
  # stage is running. Its jobs share the cores with tune's compile workers for their ~40 s.
  (MAX_JOBS=$((CORES > 8 ? CORES - 4 : 2)) timeout -k 5 300 "$PY" setup.py build_ext \
     --build-lib "$WORK/build" --build-temp "$WORK/build_tmp" > "$LOGS/build.log" 2>&1 &
   echo $! > "$WORK/build.pid"
   wait $!
   echo $? > "$WORK/build.rc") &
  BUILD_PID=$!
  echo "== build: started in the background (pid $BUILD_PID, MAX_JOBS $((CORES > 8 ? CORES - 4 : 2)), timeout 300 s)"
fi

# --- ceilings: the card's matmul rate and copy bandwidth (every fraction of peak uses them) ----
stage ceilings "$PY" benchmarks/ceilings.py "$FASTGPT_CEILINGS"

# --- tune: sweep every Triton kernel's configs; later stages use the table it writes ----------
TUNE_ARGS=(--out "$OUT")
if [ "$DRY" = 1 ]; then TUNE_ARGS+=(--dry-run --workers 0); else TUNE_ARGS+=(--workers $((CORES > 8 ? CORES / 2 : 1))); fi
TUNE_LIMIT=$(( $(budget_of tune) * SCALE + SLACK - 5 ))
TAIL_LINES=12 stage tune "$PY" scripts/tune.py "${TUNE_ARGS[@]}" --budget "$TUNE_LIMIT"
export FASTGPT_TUNED_DIR="$OUT"

# --- peers: attention vs SDPA's backends, LayerNorm / bias+GELU vs eager, compile, Liger -------
PYTEST=(-p no:cacheprovider -q -rs)
"$PY" -c "import pytest_timeout" 2> /dev/null && PYTEST+=(--timeout 90)  # one hung case fails, the stage goes on
RENDER=1 TAIL_LINES=25 stage peers "$PY" -m pytest "${PYTEST[@]}" benchmarks/bench_attention.py benchmarks/bench_norms.py \
  --benchmark-only --junitxml="$LOGS/peers.xml" ${DRY_SELECT[@]+"${DRY_SELECT[@]}"}

# --- e2e: GPT-2 124M training at T = 1024, largest batch, reference vs fastgpt, eager and compiled
RENDER=1 TAIL_LINES=12 stage e2e "$PY" -m pytest "${PYTEST[@]}" benchmarks/bench_gpt.py -k largest_batch --benchmark-only \
  --junitxml="$LOGS/e2e.xml"

# --- build-wait: the CUDA extension, swapped in atomically --------------------------------------
build_wait() {  # wait for the background build; swap its .so in atomically
  while [ ! -f "$WORK/build.rc" ]; do sleep 1; done
  local rc so
  rc=$(cat "$WORK/build.rc")
  echo "build rc $rc after $(($(date +%s) - BUILD_START)) s"; tail -3 "$LOGS/build.log"
  [ "$rc" -ne 0 ] && return "$rc"
  so=$(ls "$WORK"/build/fastgpt/_C*.so 2> /dev/null | head -1)
  [ -n "$so" ] || { echo "no fastgpt/_C*.so was built"; return 1; }
  cp "$so" "fastgpt/.$(basename "$so").new" && mv "fastgpt/.$(basename "$so").new" "fastgpt/$(basename "$so")"
  "$PY" -c "from fastgpt import _C; print('fastgpt._C cuda_built:', _C.cuda_built())"
}
if [ -n "$BUILD_PID" ]; then
  export -f build_wait
  export LOGS BUILD_START
  stage build-wait bash -c build_wait
  if [ ! -f "$WORK/build.rc" ]; then
    kill "$(cat "$WORK/build.pid")" 2> /dev/null  # the build's timeout, which stops the build
    record build 300 "$(($(now) - BUILD_START))" - timeout "stopped: not done when the tests were due"
  else
    rc=$(cat "$WORK/build.rc")
    record build 300 "$(($(now) - BUILD_START))" "$rc" "$([ "$rc" = 0 ] && echo ok || echo failed)" "in the background"
  fi
fi

# --- backends: the GEMM ops (qkv_projection, linear_bias_gelu, mlp) on the CUTLASS kernels against
# what auto runs without a measurement, into the tuning table's backend choices (scripts/tune.py)
BACKENDS_ARGS=(--backends --out "$OUT" --budget $(( $(budget_of backends) * SCALE - 2 )))
[ "$DRY" = 1 ] && BACKENDS_ARGS+=(--dry-run)
TAIL_LINES=10 stage backends "$PY" scripts/tune.py "${BACKENDS_ARGS[@]}"

# --- tests: the suite on CUDA (the AOT compile tests and scripts/sass_report.py are the CPU ------
# machine's: they read compiler output, which Triton 3.6 produces there just the same)
TEST_ARGS=("${PYTEST[@]}" tests --ignore=tests/test_aot_attention.py --ignore=tests/test_aot_norms.py
           --ignore=tests/test_gpu_check.py --ignore=tests/test_tune.py --junitxml="$LOGS/tests.xml")
[ "$DRY" = 1 ] && TEST_ARGS+=(-m gpu)  # on the CPU every GPU test skips: this exercises the stage
"$PY" -c "import xdist" 2> /dev/null && [ "$DRY" = 0 ] && TEST_ARGS+=(-n 8)
TAIL_LINES=15 stage tests "$PY" -m pytest "${TEST_ARGS[@]}"

# --- qkv: fastgpt._C's GEMMs: the fused QKV projection vs nn.Linear + head split; c_fc + GELU and
# the whole MLP (dGELU in c_proj's dx epilogue) vs eager and F.linear + the Triton kernel, fwd+bwd
RENDER=1 stage qkv "$PY" -m pytest "${PYTEST[@]}" benchmarks/bench_qkv.py --benchmark-only --junitxml="$LOGS/qkv.xml" \
  ${DRY_SELECT[@]+"${DRY_SELECT[@]}"}
[ "$DRY" = 1 ] && FC_SELECT="fwd and not bwd and not compile" || FC_SELECT="fwd+bwd and not compile"
RENDER=1 stage mlp "$PY" -m pytest "${PYTEST[@]}" benchmarks/bench_fc.py --benchmark-only --junitxml="$LOGS/mlp.xml" \
  -k "$FC_SELECT"

# --- memcheck: compute-sanitizer over the CUDA extension's kernels ------------------------------
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2> /dev/null | head -1)
if [ "$DRY" = 1 ]; then
  skip memcheck "needs CUDA: compute-sanitizer runs the extension's CUDA kernels"
elif [ -z "$SAN" ]; then
  skip memcheck "compute-sanitizer not found"
else
  stage memcheck "$SAN" --tool memcheck --error-exitcode 1 "$PY" -m pytest -q -x -p no:cacheprovider \
    tests/test_qkv_projection_ext.py tests/test_linear_bias_gelu.py tests/test_mlp.py -k cuda_kernel
fi

echo "== pack ($(($(now) - T0)) s)"
pack render
"$PY" -c "import json, sys; s = json.load(open(sys.argv[1])); print(json.dumps(s['headline'], indent=1))" "$OUT/summary.json" 2> /dev/null
echo "== done in $(($(now) - T0)) s; \$OUT: $(ls "$OUT" | tr '\n' ' ')"
rm -rf "$WORK"
