// Shared by the interop tests: small checkpoints of each family with a real
// tokenizer, weights that exercise every tensor (norm weights not all one,
// biases not zero), and a safetensors header editor for the damaged-file
// tests.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/gradcheck.h"
#include "model/checkpoint_load.h"
#include "model/params.h"
#include "model/safetensors.h"
#include "test_util.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/train.h"

namespace borealis::test {

inline const std::vector<std::string>& interop_corpus() {
  static const std::vector<std::string> corpus = {
      "The aurora borealis lights the northern sky in green and violet.",
      "Scientists train language models on papers about the northern lights.",
      "The sky was clear, and the lights danced above the frozen lake.",
      "Caf\xC3\xA9 au lait, na\xC3\xAFve r\xC3\xA9sum\xC3\xA9: bytes of more than one kind.",
  };
  return corpus;
}

// A byte-level BPE of about 300 tokens with <|endoftext|>.
inline Tokenizer interop_tokenizer() {
  BpeTrainOptions o;
  o.vocab_size = 300;
  o.min_frequency = 1;
  o.progress = false;
  return train_bpe_documents(interop_corpus(), o);
}

// The test models: GPT-2; Llama with grouped-query attention and an untied
// head; Llama with a tied head. Vocabularies not multiples of 64.
inline ModelConfig interop_config(const std::string& which, int vocab) {
  ModelConfig c = model_preset(which == "gpt2" ? "gpt2-tiny" : "llama-tiny");
  c.name = which;
  c.vocab_size = vocab;
  c.padded_vocab = pad_vocab(vocab);
  if (which == "llama-tied") c.tied_embeddings = true;
  if (which != "gpt2") c.rope_theta = 500000.0f;
  return c;
}

// Seeded init plus noise everywhere but the padded vocabulary rows (which a
// trained model keeps at zero).
inline std::vector<float> interop_params(const ModelConfig& c, std::uint64_t seed) {
  const ParamLayout layout(c);
  std::vector<float> p(static_cast<std::size_t>(layout.total()));
  init_params(c, layout, p.data(), seed);
  const auto noise = random_vector(p.size(), seed + 1, 0.05);
  for (std::size_t i = 0; i < p.size(); ++i) p[i] += static_cast<float>(noise[i]);
  for (const auto& v : layout.views()) {
    if (v.name != "wte" && v.name != "lm_head.w") continue;
    const std::int64_t from = v.offset + std::int64_t{c.vocab_size} * c.d_model;
    std::fill(p.begin() + from, p.begin() + v.offset + v.size, 0.0f);
  }
  return p;
}

// A checkpoint directory as the trainer writes it (without the optimizer).
inline void write_interop_checkpoint(const std::filesystem::path& dir, const ModelConfig& c,
                                     const std::vector<float>& params, const Tokenizer& tok) {
  std::filesystem::create_directories(dir);
  const ParamLayout layout(c);
  save_safetensors(dir / "model.safetensors", layout, params.data(),
                   {{kModelConfigKey, model_config_to_json(c)}});
  write_file(dir / "tokenizer.json", hf_tokenizer_json(tok));
}

// A safetensors file's header as JSON, and the file rewritten with a new
// header (the data section kept as it is).
inline nlohmann::json read_st_header(const std::filesystem::path& path) {
  const std::string bytes = read_file(path);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return nlohmann::json::parse(bytes.substr(8, n));
}
inline void write_st_header(const std::filesystem::path& path, const nlohmann::json& header) {
  const std::string bytes = read_file(path);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const std::string data = bytes.substr(8 + n);
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const std::uint64_t m = text.size();
  std::string out(reinterpret_cast<const char*>(&m), 8);
  write_file(path, out + text + data);
}

}  // namespace borealis::test
