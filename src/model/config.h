// Model configurations for the two decoder families and the named presets.
//
//   gpt2:  learned positions, LayerNorm, GELU MLP, biases, tied embeddings.
//   llama: RMSNorm, rotary embeddings, SwiGLU MLP, grouped-query attention,
//          no biases, tied or untied embeddings.
//
// The vocabulary is padded to a multiple of 64 (padded_vocab) so GEMM shapes
// stay aligned; padded logits are masked out of the loss and padded embedding
// rows stay zero.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace borealis {

enum class ModelFamily { kGpt2, kLlama };

std::string_view family_name(ModelFamily family);

struct ModelConfig {
  std::string name;  // preset name or "custom"
  ModelFamily family = ModelFamily::kGpt2;
  int vocab_size = 50257;
  int padded_vocab = 50304;
  int max_seq = 1024;
  int n_layer = 12;
  int n_head = 12;
  int n_kv_head = 12;  // == n_head for GPT-2 (no grouping)
  int d_model = 768;
  int d_ff = 3072;  // hidden width of the MLP (of each of gate and up for SwiGLU)
  bool tied_embeddings = true;
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;

  int head_dim() const { return d_model / n_head; }
  // Width of one row of the packed q|k|v projection.
  int qkv_width() const { return (n_head + 2 * n_kv_head) * head_dim(); }
  // Width of the first MLP projection: d_ff, or 2 * d_ff (gate | up) for SwiGLU.
  int fc_width() const { return family == ModelFamily::kLlama ? 2 * d_ff : d_ff; }
  bool has_bias() const { return family == ModelFamily::kGpt2; }

  // Throws borealis::Error naming the first inconsistent field.
  void validate() const;
};

// Rounds vocab up to a multiple of `multiple`.
int pad_vocab(int vocab, int multiple = 64);

// The config as a JSON object (all fields; family as "gpt2" / "llama"), the
// form checkpoints store it in, and back. Parsing throws borealis::Error
// naming `where` for a missing field, a wrong type or an invalid config.
std::string model_config_to_json(const ModelConfig& config);
ModelConfig model_config_from_json(std::string_view json, const std::string& where);

// gpt2-124m, gpt2-350m, llama-20m, llama-110m, and tiny test sizes
// (gpt2-tiny, llama-tiny). Throws borealis::Error for an unknown name.
ModelConfig model_preset(std::string_view name);
std::vector<std::string> model_preset_names();

}  // namespace borealis
