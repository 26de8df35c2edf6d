#!/usr/bin/env bash
# llama.cpp for the GGUF check (tests/interop/gguf_test.cpp): npm's
# node-llama-cpp, pinned, with its prebuilt CPU build of llama.cpp for
# Linux x64, installed into .cache/llama-npm (not the shared data/ folder).
# Does nothing when it is there already, or when node is missing (the test
# then skips and says so).
set -euo pipefail
cd "$(dirname "$0")/.."
version=3.21.1
dest=.cache/llama-npm
if ! command -v npm >/dev/null 2>&1; then
  echo "get-llama-cpp: npm is missing; the llama.cpp check will be skipped" >&2
  exit 0
fi
have=$(node -e "try{console.log(require('./$dest/node_modules/node-llama-cpp/package.json').version)}catch(e){}" 2>/dev/null || true)
[ "$have" = "$version" ] && exit 0
mkdir -p $dest
[ -f $dest/package.json ] || echo '{"name":"borealis-llama-check","private":true}' > $dest/package.json
echo "get-llama-cpp: installing node-llama-cpp@$version into $dest" >&2
if ! npm install --prefix $dest --no-audit --no-fund --loglevel=error -E "node-llama-cpp@$version" >&2; then
  echo "error: npm install failed for node-llama-cpp@$version (scripts/get-llama-cpp.sh)" >&2
  exit 1
fi
