#!/usr/bin/env bash
# The main job on the built-in demo data. For now: build Borealis, then check
# the machine (borealis doctor) and report the build (borealis version).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" >/dev/null
bin=build/release/src/borealis

echo "== borealis version"
"$bin" version
echo
echo "== borealis doctor"
"$bin" doctor --path .
