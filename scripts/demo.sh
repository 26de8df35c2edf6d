#!/usr/bin/env bash
# The main job on the built-in demo data: build Borealis, check the machine,
# then run the data path on the Brown corpus: train a tokenizer on it, and
# tokenize it into a Megatron dataset that is inspected and verified.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./scripts/get-brown.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" >/dev/null
bin=build/release/src/borealis
out=build/demo
mkdir -p "$out"

echo "== borealis version"
"$bin" version
echo
echo "== borealis doctor"
"$bin" doctor --path .
echo
echo "== train an 8,000-token BPE vocabulary on the Brown corpus"
"$bin" --log-level warn tokenizer train --vocab-size 8000 -i data/brown/brown.jsonl -o "$out/brown-8k.json"
echo "The atom's nucleus was measured in 1961." | "$bin" tokenizer encode -t "$out/brown-8k.json"
echo
echo "== tokenize the corpus into a Megatron dataset"
"$bin" --log-level warn data prepare -i data/brown/brown.jsonl -t "$out/brown-8k.json" -o "$out/brown" --append-eod
"$bin" data verify "$out/brown" -t "$out/brown-8k.json"
"$bin" data inspect "$out/brown" -t "$out/brown-8k.json" | head -n 20
