#!/usr/bin/env bash
# The main job on the built-in demo data: build Borealis, check the machine,
# then the whole path on the Brown corpus: train a tokenizer on it, tokenize
# it into a Megatron dataset that is inspected and verified, tokenize its 15
# categories as 15 corpora blended into a training mixture that favours the
# scientific one ("learned"), train llama-5m on it for about ten minutes
# with validation (configs/brown-llama-5m.toml), and check that the model
# beats the unigram baseline by at least 1 nat.
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
# (through a file: with pipefail, `| head` would end the script when it closes the pipe early)
"$bin" data inspect "$out/brown" -t "$out/brown-8k.json" > "$out/inspect.txt"
head -n 20 "$out/inspect.txt"
echo
echo "== the 15 Brown categories as corpora of a blended mixture (\"learned\" weighted 3x)"
node scripts/lib/brown-by-category.mjs data/brown/brown.jsonl "$out/categories"
list="$out/brown-mixture.txt"
echo "# weight prefix corpus" > "$list"
for f in "$out"/categories/*.jsonl; do
  cat=$(basename "$f" .jsonl)
  "$bin" --log-level warn data prepare -i "$f" -t "$out/brown-8k.json" -o "$out/categories/$cat" --append-eod >/dev/null
  weight=1
  [ "$cat" = learned ] && weight=3
  echo "$weight $out/categories/$cat $cat" >> "$list"
done
"$bin" data mix --data-list "$list" --seq-len 256 --train-samples 3200 --split 90,5,5 --cache-dir "$out/cache"
echo
echo "== sample 0 of the mixture"
"$bin" data sample 0 --data-list "$list" --seq-len 256 --train-samples 3200 --split 90,5,5 --cache-dir "$out/cache" \
  -t "$out/brown-8k.json" > "$out/sample0.txt"
head -n 12 "$out/sample0.txt"
echo
echo "== train llama-5m on the mixture (configs/brown-llama-5m.toml, about 10 minutes on 2 cores)"
run=runs/brown-llama-5m
rm -rf "$run"
"$bin" train configs/brown-llama-5m.toml --run-dir "$run" | tee "$out/train.log"
# The run must beat the unigram entropy of the validation tokens by 1 nat.
awk '/^validation loss/ { v = $3; u = $11 } END {
  if (v == "" || u - v < 1) { printf "demo: validation loss %s does not beat the unigram entropy %s by 1 nat\n", v, u; exit 1 }
  printf "demo: validation loss %.4f beats the unigram entropy %.4f by %.2f nats\n", v, u, u - v }' "$out/train.log"
echo
echo "== plot the run (PNG charts in $run/plots)"
"$bin" plot "$run" --x steps
echo
echo "== generate from the trained model"
for prompt in "The results of the experiment" "In the morning" "The committee"; do
  "$bin" generate --checkpoint "$run" --prompt "$prompt" --max-tokens 48 --temperature 0.8 --seed 1
  echo
done
