#!/usr/bin/env bash
# The GPU check: one call on a lent GPU machine (torch/triton preinstalled, no network).
# Builds fastgpt._C for the local arch, runs the whole test suite on CUDA and the benchmarks in
# short mode, and leaves under $OUT (the device tool brings back at most 8 files): build.log,
# tests.log, memcheck.log, bench.log, bench.json, bench.md, bench.png and summary.json.
# Budget: under 8 minutes.
#   OUT=/some/dir bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FASTGPT_BENCH_SHORT=1
PY="${PYTHON:-python3}"
TMP=$(mktemp -d)
t0=$(date +%s)
stage() { echo "== $1 ($(($(date +%s) - t0)) s)"; }

stage "environment"
{ nvidia-smi; "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > "$TMP/env.txt" 2>&1
tail -3 "$TMP/env.txt"

stage "build (local arch)"
timeout 300 "$PY" -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
build_rc=$?
tail -3 "$OUT/build.log"

stage "tests on CUDA"
timeout 300 "$PY" -m pytest -q -rs tests --junitxml="$TMP/tests.xml" > "$OUT/tests.log" 2>&1
tests_rc=$?
tail -15 "$OUT/tests.log"

stage "compute-sanitizer memcheck of the CUDA extension"
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$SAN" ]; then
  timeout 180 "$SAN" --tool memcheck --error-exitcode 1 "$PY" -m pytest -q -x tests/test_qkv_projection_ext.py -k cuda_kernel > "$OUT/memcheck.log" 2>&1
  memcheck_rc=$?
  tail -5 "$OUT/memcheck.log"
else
  memcheck_rc=-1
  echo "compute-sanitizer not found" > "$OUT/memcheck.log"
fi

stage "benchmarks (short)"
if [ -d benchmarks ] && ls benchmarks/bench_*.py > /dev/null 2>&1; then
  timeout 240 "$PY" -m pytest -q benchmarks --benchmark-only --benchmark-json="$OUT/bench.json" > "$OUT/bench.log" 2>&1
  bench_rc=$?
  tail -40 "$OUT/bench.log"
  "$PY" benchmarks/render.py "$OUT/bench.json" --md "$OUT/bench.md" --png "$OUT/bench.png"
else
  bench_rc=-1
  echo "no benchmarks yet" > "$OUT/bench.log"
fi

stage "summary"
BUILD_RC=$build_rc TESTS_RC=$tests_rc MEMCHECK_RC=$memcheck_rc BENCH_RC=$bench_rc ELAPSED=$(($(date +%s) - t0)) "$PY" - "$OUT" "$TMP" <<'PYEOF'
import datetime, json, os, subprocess, sys
import xml.etree.ElementTree as ET
out, tmp = sys.argv[1], sys.argv[2]
summary = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
try:
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                       capture_output=True, text=True).stdout.strip()
    summary["gpu"], summary["driver"], summary["gpu_memory"] = [s.strip() for s in q.splitlines()[0].split(",")]
except Exception as e:
    summary["gpu"] = f"unknown ({e})"
summary["environment"] = open(os.path.join(tmp, "env.txt")).read()
import torch, triton
summary.update(torch=torch.__version__, cuda=torch.version.cuda, triton=triton.__version__)
for key in ("BUILD_RC", "TESTS_RC", "MEMCHECK_RC", "BENCH_RC", "ELAPSED"):
    summary[key.lower()] = int(os.environ[key])
try:
    suite = ET.parse(os.path.join(tmp, "tests.xml")).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    summary["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    summary["failed_tests"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                               if c.find("failure") is not None or c.find("error") is not None]
except Exception as e:
    summary["tests"] = f"no junit xml ({e})"
try:
    bench = json.load(open(os.path.join(out, "bench.json")))
    summary["benchmarks"] = [{"name": b["name"], "median_ms": b["stats"]["median"] * 1e3, **b.get("extra_info", {})}
                             for b in bench["benchmarks"]]
except Exception as e:
    summary["benchmarks"] = f"none ({e})"
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps({k: v for k, v in summary.items() if k != "benchmarks"}, indent=1))
PYEOF
