#include "model/config.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace borealis {

std::string_view family_name(ModelFamily family) {
  return family == ModelFamily::kGpt2 ? "gpt2" : "llama";
}

int pad_vocab(int vocab, int multiple) {
  return (vocab + multiple - 1) / multiple * multiple;
}

void ModelConfig::validate() const {
  const std::string where = "model " + name;
  auto positive = [&](int v, const char* field) {
    if (v <= 0) throw Error(fmt::format("{} must be positive, got {}", field, v), where);
  };
  positive(vocab_size, "vocab_size");
  positive(max_seq, "max_seq");
  positive(n_layer, "n_layer");
  positive(n_head, "n_head");
  positive(n_kv_head, "n_kv_head");
  positive(d_model, "d_model");
  positive(d_ff, "d_ff");
  if (padded_vocab < vocab_size || padded_vocab % 64 != 0) {
    throw Error(fmt::format("padded_vocab {} must be a multiple of 64 and >= vocab_size {}",
                            padded_vocab, vocab_size),
                where);
  }
  if (d_model % n_head != 0) {
    throw Error(fmt::format("d_model {} is not a multiple of n_head {}", d_model, n_head), where);
  }
  if (n_head % n_kv_head != 0) {
    throw Error(fmt::format("n_head {} is not a multiple of n_kv_head {}", n_head, n_kv_head),
                where);
  }
  if (family == ModelFamily::kGpt2 && (n_kv_head != n_head || !tied_embeddings)) {
    throw Error("gpt2 models have n_kv_head == n_head and tied embeddings", where);
  }
  if (family == ModelFamily::kLlama && head_dim() % 2 != 0) {
    throw Error(fmt::format("rotary embeddings need an even head dimension, got {}", head_dim()),
                where);
  }
  if (!(norm_eps > 0.0f)) throw Error("norm_eps must be positive", where);
}

namespace {

ModelConfig gpt2(std::string name, int layers, int heads, int d_model, int vocab, int seq) {
  ModelConfig c;
  c.name = std::move(name);
  c.family = ModelFamily::kGpt2;
  c.vocab_size = vocab;
  c.padded_vocab = pad_vocab(vocab);
  c.max_seq = seq;
  c.n_layer = layers;
  c.n_head = heads;
  c.n_kv_head = heads;
  c.d_model = d_model;
  c.d_ff = 4 * d_model;
  c.tied_embeddings = true;
  c.norm_eps = 1e-5f;
  return c;
}

ModelConfig llama(std::string name, int layers, int heads, int kv_heads, int d_model, int d_ff,
                  int vocab, int seq, bool tied) {
  ModelConfig c;
  c.name = std::move(name);
  c.family = ModelFamily::kLlama;
  c.vocab_size = vocab;
  c.padded_vocab = pad_vocab(vocab);
  c.max_seq = seq;
  c.n_layer = layers;
  c.n_head = heads;
  c.n_kv_head = kv_heads;
  c.d_model = d_model;
  c.d_ff = d_ff;
  c.tied_embeddings = tied;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  return c;
}

}  // namespace

std::string model_config_to_json(const ModelConfig& c) {
  nlohmann::ordered_json j;
  j["name"] = c.name;
  j["family"] = std::string(family_name(c.family));
  j["vocab_size"] = c.vocab_size;
  j["padded_vocab"] = c.padded_vocab;
  j["max_seq"] = c.max_seq;
  j["n_layer"] = c.n_layer;
  j["n_head"] = c.n_head;
  j["n_kv_head"] = c.n_kv_head;
  j["d_model"] = c.d_model;
  j["d_ff"] = c.d_ff;
  j["tied_embeddings"] = c.tied_embeddings;
  j["norm_eps"] = c.norm_eps;
  j["rope_theta"] = c.rope_theta;
  return j.dump();
}

ModelConfig model_config_from_json(std::string_view json, const std::string& where) {
  const auto j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) throw Error("the model config is not a JSON object", where);
  auto field = [&](const char* key) -> const nlohmann::json& {
    const auto it = j.find(key);
    if (it == j.end()) throw Error(fmt::format("the model config has no '{}'", key), where);
    return *it;
  };
  auto integer = [&](const char* key) {
    const auto& v = field(key);
    if (!v.is_number_integer())
      throw Error(fmt::format("model '{}' is not an integer", key), where);
    return v.get<int>();
  };
  auto number = [&](const char* key) {
    const auto& v = field(key);
    if (!v.is_number()) throw Error(fmt::format("model '{}' is not a number", key), where);
    return v.get<float>();
  };
  auto string = [&](const char* key) {
    const auto& v = field(key);
    if (!v.is_string()) throw Error(fmt::format("model '{}' is not a string", key), where);
    return v.get<std::string>();
  };
  ModelConfig c;
  c.name = string("name");
  const std::string family = string("family");
  if (family == "gpt2") {
    c.family = ModelFamily::kGpt2;
  } else if (family == "llama") {
    c.family = ModelFamily::kLlama;
  } else {
    throw Error(fmt::format("unknown model family '{}' (known: gpt2, llama)", family), where);
  }
  c.vocab_size = integer("vocab_size");
  c.padded_vocab = integer("padded_vocab");
  c.max_seq = integer("max_seq");
  c.n_layer = integer("n_layer");
  c.n_head = integer("n_head");
  c.n_kv_head = integer("n_kv_head");
  c.d_model = integer("d_model");
  c.d_ff = integer("d_ff");
  const auto& tied = field("tied_embeddings");
  if (!tied.is_boolean()) throw Error("model 'tied_embeddings' is not a boolean", where);
  c.tied_embeddings = tied.get<bool>();
  c.norm_eps = number("norm_eps");
  c.rope_theta = number("rope_theta");
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(e.message(), where);
  }
  return c;
}

std::vector<std::string> model_preset_names() {
  return {"gpt2-124m",  "gpt2-350m", "llama-5m",  "llama-20m",
          "llama-110m", "gpt2-tiny", "llama-tiny"};
}

ModelConfig model_preset(std::string_view name) {
  ModelConfig c;
  if (name == "gpt2-124m") {
    c = gpt2("gpt2-124m", 12, 12, 768, 50257, 1024);
  } else if (name == "gpt2-350m") {
    c = gpt2("gpt2-350m", 24, 16, 1024, 50257, 1024);
  } else if (name == "llama-5m") {
    // ~5.0M parameters with an 8k vocabulary: the size that learns most from
    // ten minutes on a 2-core CPU (the Brown demo).
    c = llama("llama-5m", 4, 4, 2, 256, 704, 8192, 1024, true);
  } else if (name == "llama-20m") {
    // ~21.7M parameters: a model that trains in minutes on a laptop CPU.
    c = llama("llama-20m", 6, 6, 2, 384, 1024, 32000, 1024, true);
  } else if (name == "llama-110m") {
    // ~107M parameters with tied embeddings (Llama-2 tokenizer vocabulary).
    c = llama("llama-110m", 12, 12, 4, 768, 2304, 32000, 2048, true);
  } else if (name == "gpt2-tiny") {
    // Test size: vocabulary deliberately not a multiple of 64.
    c = gpt2("gpt2-tiny", 2, 4, 32, 97, 64);
  } else if (name == "llama-tiny") {
    c = llama("llama-tiny", 2, 4, 2, 32, 48, 97, 64, false);
  } else {
    std::string known;
    for (const auto& n : model_preset_names()) known += (known.empty() ? "" : ", ") + n;
    throw Error(fmt::format("unknown model preset '{}' (known: {})", name, known), "--model");
  }
  c.validate();
  return c;
}

}  // namespace borealis
