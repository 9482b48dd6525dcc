#!/usr/bin/env bash
# Prepares .gpu_carry/ (git-ignored): what the GPU check needs on the lent GPU machine that its
# image lacks and that machine, with no network, cannot fetch. Run it here, in the checkout the
# device call is made from, just before the call, and name the folder in the call's carry list:
#   run(command="bash scripts/gpu_check.sh", timeout_s=600, carry=[".gpu_carry"])
#
#   whl/liger_kernel-0.8.5-py3-none-any.whl   Liger-Kernel, the LayerNorm peer: pure Python (its
#                                             torch and triton are on the machine), so its wheel
#                                             installs there without a network (gpu_check's carry stage)
#   cutlass-include.tar.gz                    CUTLASS's headers (cute/, cutlass/), from this
#                                             environment's nvidia-cutlass, for fastgpt._C's
#                                             CUDA build (the machine has no nvidia-cutlass);
#                                             27 MB of headers, about 2.4 MB packed: the tree
#                                             that travels is capped at 64 MiB
#   MANIFEST.txt                              what is here, with sizes
#
#   bash scripts/gpu_carry.sh        # PYTHON=... to use another interpreter than .venv's
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-${FASTGPT_VENV:-$PWD/.venv}/bin/python}"
LIGER="liger-kernel==0.8.5"
LIMIT=$((64 << 20))

rm -rf .gpu_carry
mkdir -p .gpu_carry/whl
# The GPU machine runs Python 3.12 on x86-64 (the device tool's notes).
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu_carry/whl "$LIGER"

include=$("$PY" -c "import importlib.util, os; s = importlib.util.find_spec('cutlass_library'); \
print(os.path.join(os.path.dirname(s.origin), 'source', 'include') if s else '')")
if [ -n "$include" ] && [ -f "$include/cutlass/cutlass.h" ]; then
  tar -C "$(dirname "$include")" -czf .gpu_carry/cutlass-include.tar.gz include
  cutlass="CUTLASS headers from $include"
else
  cutlass="no CUTLASS headers: nvidia-cutlass is not installed for $PY (fastgpt._C needs them once it uses CUTLASS)"
fi

{
  echo "prepared $(date -u +%Y-%m-%dT%H:%M:%SZ) by scripts/gpu_carry.sh"
  echo "$cutlass"
  (cd .gpu_carry && find . -type f ! -name MANIFEST.txt -printf '%s\t%p\n' | sort -k2)
} > .gpu_carry/MANIFEST.txt

carry=$(du -sb .gpu_carry | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2> /dev/null | tail -1 | cut -f1)
cat .gpu_carry/MANIFEST.txt
echo "carry $((carry / 1024)) KiB + working tree $((tree / 1024)) KiB = $(((carry + tree) / 1024)) KiB of the $((LIMIT >> 20)) MiB that may travel"
if [ $((carry + tree)) -gt "$LIMIT" ]; then
  echo "over the device tool's 64 MiB: the call would be refused" >&2
  exit 1
fi
