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

// A contiguous run [begin, begin + length) of indices along one dimension.
struct IndexRun {
  std::int64_t begin = 0;
  std::int64_t length = 0;
};

struct ParamView {
  std::string name;  // e.g. "h.3.attn.qkv.w"
  std::vector<std::int64_t> shape;
  std::int64_t offset = 0;  // in elements, into the flat buffer
  std::int64_t size = 0;    // product of shape
  ParamKind kind = ParamKind::kMatrix;
  bool residual_projection = false;  // output projection into the residual stream
  // Under tensor parallelism a view may hold part of the whole tensor: the
  // indices `runs` (in this order) of dimension split_dim of whole_shape.
  // split_dim -1: the whole tensor (replicated on every rank of the group).
  std::vector<std::int64_t> whole_shape;
  int split_dim = -1;
  std::vector<IndexRun> runs;
  bool is_split() const { return split_dim >= 0; }
  // Under pipeline parallelism with tied embeddings: the last stage's copy
  // of wte (its output layer). The first stage owns wte; the two copies'
  // gradients are summed so that they stay equal, and the gradient norm and
  // checkpoints count the owner's only.
  bool pipeline_copy = false;
};

// A rank's place in a tensor-parallel group (Megatron-LM, arXiv 1909.08053).
// Attention is cut by heads (query heads and key/value heads alike), the MLP
// by hidden units, the embedding and the output layer by vocabulary rows:
//   attn.qkv (w, b)   rows of this rank's q, k and v heads   (column-parallel)
//   attn.proj.w       columns of this rank's heads            (row-parallel)
//   mlp.fc (w, b)     rows of this rank's hidden units (of gate and of up)
//   mlp.proj.w        columns of this rank's hidden units     (row-parallel)
//   wte, lm_head.w    rows [rank * Vp / size, (rank + 1) * Vp / size)
// Norms, positions (wpe) and the biases of row-parallel layers are whole on
// every rank.
struct TensorSplit {
  int rank = 0;
  int size = 1;
};

// A rank's place in a pipeline (Megatron-LM, arXiv 2104.04473): stage s of
// P holds the blocks [s * L / P, (s + 1) * L / P) of the L layers; the
// first stage also the embeddings (wte, wpe), the last the final norm and
// the output layer (with tied embeddings a copy of wte, ParamView::
// pipeline_copy).
struct PipelineStage {
  int stage = 0;
  int stages = 1;
  bool first() const { return stage == 0; }
  bool last() const { return stage == stages - 1; }
  int first_layer(int n_layer) const { return stage * n_layer / stages; }
  int end_layer(int n_layer) const { return (stage + 1) * n_layer / stages; }
};

// Throws borealis::Error (at `where`) when the model's layers cannot be
// cut into `stages` equal stages.
void check_pipeline_split(const ModelConfig& config, int stages, const std::string& where);

// Throws borealis::Error (at `where`) naming the dimension when the model
// cannot be cut into `size` parts: heads, key/value heads, d_ff and the
// padded vocabulary must each divide by it.
void check_tensor_split(const ModelConfig& config, int size, const std::string& where);

// Copies the part of a whole tensor (whole_shape, row-major) that view `v`
// holds into `part` (v.shape), and back.
template <typename T>
void take_part(const ParamView& v, const T* whole, T* part);
template <typename T>
void put_part(const ParamView& v, const T* part, T* whole);

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
  // The whole model, or (split.size > 1) the part of it one rank of a
  // tensor-parallel group holds, of the layers of its pipeline stage; names
  // are the same, shapes are the part's.
  explicit ParamLayout(const ModelConfig& config, TensorSplit split = {}, PipelineStage stage = {});

  const TensorSplit& split() const { return split_; }
  const PipelineStage& stage() const { return stage_; }
  // The blocks this layout holds: [first_layer(), end_layer()).
  int first_layer() const { return first_layer_; }
  int end_layer() const { return end_layer_; }

  const std::vector<ParamView>& views() const { return views_; }
  std::int64_t total() const { return total_; }
  // Throws std::out_of_range for an unknown name.
  const ParamView& find(std::string_view name) const;

  // Offsets; -1 for what the layout does not hold (on other pipeline stages).
  std::int64_t wte() const { return wte_; }
  std::int64_t wpe() const { return wpe_; }  // -1 for Llama
  std::int64_t lnf_w() const { return lnf_w_; }
  std::int64_t lnf_b() const { return lnf_b_; }      // -1 for Llama
  std::int64_t lm_head() const { return lm_head_; }  // == wte() when tied
  // Layer l (of the whole model) must be in [first_layer(), end_layer()).
  const LayerOffsets& layer(int l) const { return layers_[static_cast<std::size_t>(l)]; }

 private:
  std::int64_t add(std::string name, std::vector<std::int64_t> shape, ParamKind kind,
                   bool residual_projection = false, int split_dim = -1,
                   std::vector<IndexRun> runs = {});

  TensorSplit split_;
  PipelineStage stage_;
  int first_layer_ = 0, end_layer_ = 0;
  std::vector<ParamView> views_;
  std::vector<LayerOffsets> layers_;
  std::int64_t total_ = 0;
  std::int64_t wte_ = -1, wpe_ = -1, lnf_w_ = -1, lnf_b_ = -1, lm_head_ = -1;
};

// Seeded, reproducible initialisation (GPT-2 style): matrices and embeddings
// N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 * n_layer)), biases 0,
// norm weights 1; padded vocabulary rows 0. Each tensor draws from its own
// stream keyed by (seed, name), so the values do not depend on layout order
// or thread count; a tensor-parallel part gets its share of the whole
// tensor's values.
template <typename T>
void init_params(const ModelConfig& config, const ParamLayout& layout, T* params,
                 std::uint64_t seed);

}  // namespace borealis
