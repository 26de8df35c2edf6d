// Hugging Face's tokenizers.js (npm @huggingface/tokenizers) as a reference
// implementation: encodes Brown documents with a tokenizer.json through node.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace borealis::test {

// The first `n` Brown documents (data/brown/brown.jsonl).
std::vector<std::string> brown_documents(std::size_t n);

// Their ids from tokenizers.js; fails the calling test (via exception) when
// node or the package is missing.
std::vector<std::vector<std::uint32_t>> hf_js_encode(const std::filesystem::path& tokenizer_json,
                                                     std::size_t n);

}  // namespace borealis::test
