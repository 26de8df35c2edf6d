#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test.
# Usage: scripts/test.sh [PRESET]   (release by default; also debug, asan)
set -euo pipefail
cd "$(dirname "$0")/.."

preset=${1:-release}
jobs=$(nproc)

./scripts/setup.sh
./scripts/get-brown.sh
./scripts/get-tokenizers.sh
./scripts/get-llama-cpp.sh
echo "== configure ($preset)"
cmake --preset "$preset" >/dev/null
echo "== build ($preset)"
cmake --build --preset "$preset" -j "$jobs"
echo "== test ($preset)"
ctest --preset "$preset" -j "$jobs"
