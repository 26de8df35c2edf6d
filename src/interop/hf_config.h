// Hugging Face config.json and generation_config.json for GPT2LMHeadModel
// and LlamaForCausalLM, written as transformers writes them (keys sorted,
// two-space indent, trailing newline) and read back into a ModelConfig.
//
// Reading follows transformers: a missing field takes the default of
// GPT2Config / LlamaConfig. Whatever Borealis's model cannot compute the
// same way is an Error naming the field: another model_type, an activation
// other than GPT-2's tanh GELU or Llama's SiLU, rope_scaling other than
// none/"default", attention or MLP biases on Llama, an untied GPT-2 head,
// a head_dim other than hidden_size / num_attention_heads.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>

#include "model/config.h"
#include "model/safetensors.h"

namespace borealis {

// The transformers release whose file layout these writers follow.
inline constexpr const char* kTransformersVersion = "4.46.0";

// "float32", "bfloat16", "float16": transformers' torch_dtype names.
std::string torch_dtype_name(TensorDtype dtype);

// The ids of the beginning- and end-of-text tokens, when the tokenizer has them.
struct SpecialIds {
  std::optional<std::uint32_t> bos, eos;
};

std::string hf_config_json(const ModelConfig& config, TensorDtype dtype, const SpecialIds& ids);
std::string hf_generation_config_json(const SpecialIds& ids);

// The config of a config.json; `where` names the file in errors, `name`
// becomes the config's name.
ModelConfig model_config_from_hf(const nlohmann::json& j, const std::string& where,
                                 const std::string& name);

}  // namespace borealis
