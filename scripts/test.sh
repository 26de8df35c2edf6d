#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test.
# Usage: scripts/test.sh [PRESET] [--no-torch]
#   PRESET      release (default), debug or asan
#   --no-torch  do not install Debian's python3-torch (a large package); the
#               PyTorch parity tests are then skipped, and this script says so
#               at the end. Without it they must run: BOREALIS_REQUIRE_TORCH=1
#               turns a missing or broken PyTorch into a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

preset=release
with_torch=1
for arg in "$@"; do
  case "$arg" in
    --no-torch) with_torch=0 ;;
    -*) echo "error: unknown option '$arg' (scripts/test.sh [PRESET] [--no-torch])" >&2; exit 2 ;;
    *) preset=$arg ;;
  esac
done
jobs=$(nproc)

if [ "$with_torch" -eq 1 ]; then
  ./scripts/setup.sh --with-torch
  export BOREALIS_REQUIRE_TORCH=1
else
  ./scripts/setup.sh
  unset BOREALIS_REQUIRE_TORCH
fi
./scripts/get-brown.sh
./scripts/get-tokenizers.sh
./scripts/get-llama-cpp.sh
echo "== configure ($preset)"
# Configure warnings (the MPI suites left out when mpiexec is missing) are
# shown; the rest of cmake's chatter is not.
cmake --preset "$preset" >/dev/null
echo "== build ($preset)"
cmake --build --preset "$preset" -j "$jobs"
echo "== test ($preset)"
log=$(mktemp -t borealis-test.XXXXXX)
trap 'rm -f "$log"' EXIT
status=0
ctest --preset "$preset" -j "$jobs" 2>&1 | tee "$log" || status=$?

# ctest lists skipped tests among many lines; say it where it cannot be missed.
# Its summary lists them as "  NN - NAME (Skipped|Disabled|Not Run)" under
# "The following tests did not run:".
# The GPU tests (*CudaOps*/cuda, *CudaBf16Ops*/cuda, *CudaModel*, CudaLimits.*,
# *NcclOneRank*/cuda) skip wherever no GPU answers, as on CI: they are counted
# apart, and scripts/device-check.sh runs them on a GPU.
count_skipped() {
  awk -v want="$1" '/The following tests did not run:/ {list = 1; next}
                    list && /^[[:space:]]+[0-9]+ - / {
                      cuda = $0 ~ /Cuda(Ops|Model|Limits|Bf16Ops)|NcclOneRank/
                      if ((want == "cuda") == cuda) n++
                      next
                    }
                    list {list = 0}
                    END {print n + 0}' "$log"
}
skipped=$(count_skipped other)
cuda_skipped=$(count_skipped cuda)
if [ "$with_torch" -eq 0 ]; then
  echo "== NOTE: --no-torch: the PyTorch parity tests (TorchParity.*) were skipped" >&2
fi
if [ "$cuda_skipped" -gt 0 ]; then
  echo "== NOTE: $cuda_skipped CUDA test(s) skipped: no usable GPU here (scripts/device-check.sh runs them on one)" >&2
fi
if [ "$skipped" -gt 0 ]; then
  echo "== WARNING: $skipped test(s) did not run; see 'The following tests did not run' above" >&2
fi
exit "$status"
