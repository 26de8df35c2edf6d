// The parameter layout: every tensor of a model as a named view (name,
// shape, offset) into one flat buffer.
//
// Parameters, gradients and optimizer moments all use this one layout, so the
// optimizer, gradient clipping, allreduce, ZeRO sharding and checkpoints work
// on flat buffers and only look at views when they need names or kinds.
// Per-layer tensors are contiguous per layer, in the order the forward pass
// reads them. Weights of linear layers are [out, in] (as torch.nn.Linear).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/config.h"

namespace borealis {

// What a tensor is, for weight-decay exclusion and initialisation.
enum class ParamKind { kMatrix, kEmbedding, kNorm, kBias };

struct ParamView {
  std::string name;  // e.g. "h.3.attn.qkv.w"
  std::vector<std::int64_t> shape;
  std::int64_t offset = 0;  // in elements, into the flat buffer
  std::int64_t size = 0;    // product of shape
  ParamKind kind = ParamKind::kMatrix;
  bool residual_projection = false;  // output projection into the residual stream
};

// Offsets of the tensors of one transformer block (-1 when absent: biases of
// Llama, norm biases of RMSNorm).
struct LayerOffsets {
  std::int64_t ln1_w = -1, ln1_b = -1;
  std::int64_t qkv_w = -1, qkv_b = -1;
  std::int64_t proj_w = -1, proj_b = -1;
  std::int64_t ln2_w = -1, ln2_b = -1;
  std::int64_t fc_w = -1, fc_b = -1;
  std::int64_t fcproj_w = -1, fcproj_b = -1;
};

class ParamLayout {
 public:
  explicit ParamLayout(const ModelConfig& config);

  const std::vector<ParamView>& views() const { return views_; }
  std::int64_t total() const { return total_; }
  // Throws std::out_of_range for an unknown name.
  const ParamView& find(std::string_view name) const;

  std::int64_t wte() const { return wte_; }
  std::int64_t wpe() const { return wpe_; }  // -1 for Llama
  std::int64_t lnf_w() const { return lnf_w_; }
  std::int64_t lnf_b() const { return lnf_b_; }      // -1 for Llama
  std::int64_t lm_head() const { return lm_head_; }  // == wte() when tied
  const LayerOffsets& layer(int l) const { return layers_[static_cast<std::size_t>(l)]; }

 private:
  std::int64_t add(std::string name, std::vector<std::int64_t> shape, ParamKind kind,
                   bool residual_projection = false);

  std::vector<ParamView> views_;
  std::vector<LayerOffsets> layers_;
  std::int64_t total_ = 0;
  std::int64_t wte_ = -1, wpe_ = -1, lnf_w_ = -1, lnf_b_ = -1, lm_head_ = -1;
};

// Seeded, reproducible initialisation (GPT-2 style): matrices and embeddings
// N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 * n_layer)), biases 0,
// norm weights 1; padded vocabulary rows 0. Each tensor draws from its own
// stream keyed by (seed, name), so the values do not depend on layout order
// or thread count.
template <typename T>
void init_params(const ModelConfig& config, const ParamLayout& layout, T* params,
                 std::uint64_t seed);

}  // namespace borealis
