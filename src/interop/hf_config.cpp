#include "interop/hf_config.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace borealis {

using json = nlohmann::json;  // sorts keys, as transformers' json.dumps(sort_keys=True)

std::string torch_dtype_name(TensorDtype dtype) {
  switch (dtype) {
    case TensorDtype::kF32:
      return "float32";
    case TensorDtype::kF16:
      return "float16";
    case TensorDtype::kBF16:
      return "bfloat16";
  }
  return "?";
}

namespace {

json id_or_null(const std::optional<std::uint32_t>& id) {
  return id ? json(*id) : json(nullptr);
}

// Python's json.dumps writes floats with a decimal point (1e-05, 10000.0);
// nlohmann does the same for doubles. Borealis stores floats: widen via the
// shortest decimal so 1e-5f is written 1e-05, not 9.99999974737875e-06.
double as_written(float x) {
  return std::stod(fmt::format("{}", x));
}

}  // namespace

std::string hf_config_json(const ModelConfig& c, TensorDtype dtype, const SpecialIds& ids) {
  json j;
  j["bos_token_id"] = id_or_null(ids.bos);
  j["eos_token_id"] = id_or_null(ids.eos);
  j["initializer_range"] = 0.02;
  j["torch_dtype"] = torch_dtype_name(dtype);
  j["transformers_version"] = kTransformersVersion;
  j["use_cache"] = true;
  j["vocab_size"] = c.vocab_size;
  if (c.family == ModelFamily::kGpt2) {
    // Dropout is 0: Borealis trains without it, and fine-tuning in
    // transformers should continue the same model.
    j["activation_function"] = "gelu_new";
    j["architectures"] = {"GPT2LMHeadModel"};
    j["attn_pdrop"] = 0.0;
    j["embd_pdrop"] = 0.0;
    j["layer_norm_epsilon"] = as_written(c.norm_eps);
    j["model_type"] = "gpt2";
    j["n_embd"] = c.d_model;
    j["n_head"] = c.n_head;
    j["n_inner"] = c.d_ff;
    j["n_layer"] = c.n_layer;
    j["n_positions"] = c.max_seq;
    j["reorder_and_upcast_attn"] = false;
    j["resid_pdrop"] = 0.0;
    j["scale_attn_by_inverse_layer_idx"] = false;
    j["scale_attn_weights"] = true;
    j["summary_activation"] = nullptr;
    j["summary_first_dropout"] = 0.1;
    j["summary_proj_to_labels"] = true;
    j["summary_type"] = "cls_index";
    j["summary_use_proj"] = true;
  } else {
    j["architectures"] = {"LlamaForCausalLM"};
    j["attention_bias"] = false;
    j["attention_dropout"] = 0.0;
    j["head_dim"] = c.head_dim();
    j["hidden_act"] = "silu";
    j["hidden_size"] = c.d_model;
    j["intermediate_size"] = c.d_ff;
    j["max_position_embeddings"] = c.max_seq;
    j["mlp_bias"] = false;
    j["model_type"] = "llama";
    j["num_attention_heads"] = c.n_head;
    j["num_hidden_layers"] = c.n_layer;
    j["num_key_value_heads"] = c.n_kv_head;
    j["pretraining_tp"] = 1;
    j["rms_norm_eps"] = as_written(c.norm_eps);
    j["rope_scaling"] = nullptr;
    j["rope_theta"] = as_written(c.rope_theta);
    j["tie_word_embeddings"] = c.tied_embeddings;
  }
  return j.dump(2) + "\n";
}

std::string hf_generation_config_json(const SpecialIds& ids) {
  json j;
  j["_from_model_config"] = true;
  if (ids.bos) j["bos_token_id"] = *ids.bos;
  if (ids.eos) j["eos_token_id"] = *ids.eos;
  j["transformers_version"] = kTransformersVersion;
  return j.dump(2) + "\n";
}

namespace {

// Typed reads of config.json fields with transformers' defaults.
class Fields {
 public:
  Fields(const json& j, std::string where) : j_(j), where_(std::move(where)) {}

  const json* find(const char* key) const {
    const auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  int integer(const char* key, int fallback) const {
    const json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_number_integer() || v->get<std::int64_t>() <= 0 ||
        v->get<std::int64_t>() > (1ll << 31) - 1) {
      throw Error(fmt::format("field '{}' is {}, expected a positive integer", key, v->dump()),
                  where_);
    }
    return v->get<int>();
  }
  float number(const char* key, float fallback) const {
    const json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_number()) {
      throw Error(fmt::format("field '{}' is {}, expected a number", key, v->dump()), where_);
    }
    return v->get<float>();
  }
  bool boolean(const char* key, bool fallback) const {
    const json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) {
      throw Error(fmt::format("field '{}' is {}, expected true or false", key, v->dump()), where_);
    }
    return v->get<bool>();
  }
  std::string string(const char* key, const char* fallback) const {
    const json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_string()) {
      throw Error(fmt::format("field '{}' is {}, expected a string", key, v->dump()), where_);
    }
    return v->get<std::string>();
  }
  // A field whose value Borealis's model cannot honour.
  [[noreturn]] void unsupported(const char* key, const std::string& why) const {
    const json* v = find(key);
    throw Error(fmt::format("field '{}' = {}: {}", key, v ? v->dump() : "null", why), where_);
  }
  void require_bool(const char* key, bool fallback, bool wanted, const std::string& why) const {
    if (boolean(key, fallback) != wanted) unsupported(key, why);
  }

 private:
  const json& j_;
  std::string where_;
};

ModelConfig gpt2_from_hf(const Fields& f, ModelConfig c) {
  c.family = ModelFamily::kGpt2;
  c.vocab_size = f.integer("vocab_size", 50257);
  c.max_seq = f.integer("n_positions", 1024);
  c.d_model = f.integer("n_embd", 768);
  c.n_layer = f.integer("n_layer", 12);
  c.n_head = f.integer("n_head", 12);
  c.n_kv_head = c.n_head;
  c.d_ff = f.integer("n_inner", 4 * c.d_model);
  c.norm_eps = f.number("layer_norm_epsilon", 1e-5f);
  c.tied_embeddings = true;
  // gelu_new, gelu_pytorch_tanh and gelu_fast are the same tanh
  // approximation of GELU, the one Borealis computes.
  const std::string act = f.string("activation_function", "gelu_new");
  if (act != "gelu_new" && act != "gelu_pytorch_tanh" && act != "gelu_fast") {
    f.unsupported("activation_function",
                  "Borealis's GPT-2 uses the tanh GELU (gelu_new, gelu_pytorch_tanh)");
  }
  f.require_bool("scale_attn_weights", true, true, "unscaled attention is not implemented");
  f.require_bool("scale_attn_by_inverse_layer_idx", false, false,
                 "per-layer attention scaling is not implemented");
  f.require_bool("add_cross_attention", false, false, "cross-attention is not implemented");
  f.require_bool("tie_word_embeddings", true, true, "GPT-2 models have a tied head in Borealis");
  return c;
}

ModelConfig llama_from_hf(const Fields& f, ModelConfig c) {
  c.family = ModelFamily::kLlama;
  c.vocab_size = f.integer("vocab_size", 32000);
  c.d_model = f.integer("hidden_size", 4096);
  c.d_ff = f.integer("intermediate_size", 11008);
  c.n_layer = f.integer("num_hidden_layers", 32);
  c.n_head = f.integer("num_attention_heads", 32);
  c.n_kv_head = f.integer("num_key_value_heads", c.n_head);
  c.max_seq = f.integer("max_position_embeddings", 2048);
  c.norm_eps = f.number("rms_norm_eps", 1e-6f);
  c.rope_theta = f.number("rope_theta", 10000.0f);
  c.tied_embeddings = f.boolean("tie_word_embeddings", false);
  if (f.string("hidden_act", "silu") != "silu") {
    f.unsupported("hidden_act", "Borealis's Llama MLP is SwiGLU (silu)");
  }
  f.require_bool("attention_bias", false, false, "Borealis's Llama has no attention biases");
  f.require_bool("mlp_bias", false, false, "Borealis's Llama has no MLP biases");
  if (const json* rs = f.find("rope_scaling")) {
    std::string kind = "?";
    if (rs->is_object()) {
      const auto t = rs->contains("rope_type") ? rs->at("rope_type") : rs->value("type", json());
      if (t.is_string()) kind = t.get<std::string>();
    }
    if (kind != "default") {
      f.unsupported(
          "rope_scaling",
          fmt::format("rope scaling kind '{}' is not implemented (only plain RoPE)", kind));
    }
  }
  if (f.number("partial_rotary_factor", 1.0f) != 1.0f) {
    f.unsupported("partial_rotary_factor", "Borealis rotates whole heads");
  }
  if (c.d_model % c.n_head == 0 && f.integer("head_dim", c.d_model / c.n_head) != c.head_dim()) {
    f.unsupported("head_dim", fmt::format("Borealis's heads are hidden_size / num_attention_heads "
                                          "= {} wide",
                                          c.head_dim()));
  }
  return c;
}

}  // namespace

ModelConfig model_config_from_hf(const json& j, const std::string& where, const std::string& name) {
  if (!j.is_object()) throw Error("config.json is not a JSON object", where);
  const Fields f(j, where);
  ModelConfig c;
  c.name = name;
  const json* type = f.find("model_type");
  if (type == nullptr) throw Error("no 'model_type' field (expected gpt2 or llama)", where);
  const std::string model_type = f.string("model_type", "");
  if (model_type == "gpt2") {
    c = gpt2_from_hf(f, c);
  } else if (model_type == "llama") {
    c = llama_from_hf(f, c);
  } else {
    throw Error(
        fmt::format("model_type '{}' is not supported (supported: gpt2, llama)", model_type),
        where);
  }
  c.padded_vocab = pad_vocab(c.vocab_size);
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(e.message(), where);
  }
  return c;
}

}  // namespace borealis
