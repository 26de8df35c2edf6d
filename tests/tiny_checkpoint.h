// A tiny checkpoint written by a test, as the trainer writes one: random
// weights of a small preset and a byte-level BPE trained on a few sentences.
// For the tests of generate, serve and anything else that loads a checkpoint.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace borealis::test {

// The sentences the tokenizer is trained on.
extern const std::vector<std::string> kTinyCorpus;

// A 300-token byte-level BPE trained on kTinyCorpus.
Tokenizer tiny_tokenizer();

// `preset` ("gpt2-tiny", "llama-tiny") sized for a vocabulary of `vocab`.
ModelConfig tiny_config(std::size_t vocab, const std::string& preset = "gpt2-tiny");

// model.safetensors (with the config in its metadata unless with_metadata is
// false), tokenizer.json and state.json in dir. edit, when given, changes
// the weights before they are saved.
void write_checkpoint(const std::filesystem::path& dir, const Tokenizer& tok, std::uint64_t seed,
                      bool with_metadata = true,
                      const std::function<void(Model<float>&)>& edit = nullptr,
                      const std::string& preset = "gpt2-tiny");

}  // namespace borealis::test
