// Hugging Face tokenizer.json, BPE models with byte-level pre-tokenization:
// GPT-2, Llama 3, Qwen and the vocabularies `borealis tokenizer train` writes.
//
// Supported: model BPE (vocab, merges as "a b" strings or pairs,
// ignore_merges), pre-tokenizers ByteLevel (add_prefix_space, use_regex) and
// Split (Regex or String pattern, behavior Isolated) alone or in a Sequence
// ending in ByteLevel, ByteLevel decoder, added tokens. Anything else is an
// Error naming the feature and its JSON path.
#pragma once

#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "tokenizer/tokenizer.h"

namespace borealis {

Tokenizer load_hf_tokenizer(const nlohmann::json& j, const std::filesystem::path& path);

// The tokenizer as tokenizer.json text (byte-level BPE with a Split + ByteLevel
// pre-tokenizer). Only for models built from merges.
std::string hf_tokenizer_json(const Tokenizer& tok);

}  // namespace borealis
