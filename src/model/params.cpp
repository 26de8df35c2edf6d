#include "model/params.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>
#include <vector>

#include "core/error.h"
#include "core/hash.h"

namespace borealis {

std::int64_t ParamLayout::add(std::string name, std::vector<std::int64_t> shape, ParamKind kind,
                              bool residual_projection, int split_dim, std::vector<IndexRun> runs) {
  ParamView v;
  v.name = std::move(name);
  v.whole_shape = shape;
  if (split_dim >= 0 && split_.size > 1) {
    v.split_dim = split_dim;
    std::int64_t part = 0;
    for (const IndexRun& r : runs) part += r.length;
    shape[static_cast<std::size_t>(split_dim)] = part;
    v.runs = std::move(runs);
  }
  v.size = 1;
  for (auto d : shape) v.size *= d;
  v.shape = std::move(shape);
  v.offset = total_;
  v.kind = kind;
  v.residual_projection = residual_projection;
  total_ += v.size;
  views_.push_back(std::move(v));
  return views_.back().offset;
}

void check_tensor_split(const ModelConfig& c, int size, const std::string& where) {
  if (size < 1) {
    throw Error(fmt::format("dist.tensor_parallel must be at least 1, got {}", size), where);
  }
  const auto need = [&](int value, const char* what) {
    if (value % size != 0) {
      throw Error(fmt::format("dist.tensor_parallel = {} does not divide the model's {} = {}: "
                              "every rank of a tensor-parallel group holds an equal part",
                              size, what, value),
                  where);
    }
  };
  need(c.n_head, "n_head");
  need(c.n_kv_head, "n_kv_head");
  need(c.d_ff, "d_ff");
  need(c.padded_vocab, "padded_vocab");
}

void check_pipeline_split(const ModelConfig& c, int stages, const std::string& where) {
  if (stages < 1) {
    throw Error(fmt::format("dist.pipeline_parallel must be at least 1, got {}", stages), where);
  }
  if (c.n_layer % stages != 0) {
    throw Error(fmt::format("dist.pipeline_parallel = {} does not divide the model's n_layer = {}: "
                            "every pipeline stage holds an equal number of layers",
                            stages, c.n_layer),
                where);
  }
}

ParamLayout::ParamLayout(const ModelConfig& c, TensorSplit split, PipelineStage stage)
    : split_(split), stage_(stage) {
  if (split_.size < 1 || split_.rank < 0 || split_.rank >= split_.size) {
    throw std::invalid_argument("ParamLayout: tensor split rank outside its group");
  }
  if (stage_.stages < 1 || stage_.stage < 0 || stage_.stage >= stage_.stages) {
    throw std::invalid_argument("ParamLayout: pipeline stage outside its pipeline");
  }
  if (split_.size > 1) check_tensor_split(c, split_.size, "tensor_parallel");
  if (stage_.stages > 1) check_pipeline_split(c, stage_.stages, "pipeline_parallel");
  first_layer_ = stage_.first_layer(c.n_layer);
  end_layer_ = stage_.end_layer(c.n_layer);
  const bool gpt2 = c.family == ModelFamily::kGpt2;
  const std::int64_t C = c.d_model;
  const std::int64_t r = split_.rank;
  const std::int64_t n = split_.size;
  const std::int64_t HD = c.head_dim();
  const std::int64_t NH = c.n_head, NKV = c.n_kv_head, F = c.d_ff;
  // This rank's runs: vocabulary rows, q|k|v heads, hidden units (of gate
  // and up for SwiGLU), attention columns.
  const std::int64_t V = c.padded_vocab / n;
  const std::vector<IndexRun> vocab = {{r * V, V}};
  const std::vector<IndexRun> qkv = {{r * NH / n * HD, NH / n * HD},
                                     {NH * HD + r * NKV / n * HD, NKV / n * HD},
                                     {(NH + NKV) * HD + r * NKV / n * HD, NKV / n * HD}};
  std::vector<IndexRun> hidden = {{r * F / n, F / n}};
  if (!gpt2) hidden.push_back({F + r * F / n, F / n});
  const std::vector<IndexRun> heads = {{r * NH / n * HD, NH / n * HD}};
  const std::vector<IndexRun> units = {{r * F / n, F / n}};

  if (stage_.first()) {
    wte_ = add("wte", {c.padded_vocab, C}, ParamKind::kEmbedding, false, 0, vocab);
    if (gpt2) wpe_ = add("wpe", {c.max_seq, C}, ParamKind::kEmbedding);
  }
  layers_.resize(static_cast<std::size_t>(c.n_layer));
  for (int l = first_layer_; l < end_layer_; ++l) {
    const std::string p = fmt::format("h.{}.", l);
    LayerOffsets& o = layers_[static_cast<std::size_t>(l)];
    o.ln1_w = add(p + "ln1.w", {C}, ParamKind::kNorm);
    if (gpt2) o.ln1_b = add(p + "ln1.b", {C}, ParamKind::kNorm);
    o.qkv_w = add(p + "attn.qkv.w", {c.qkv_width(), C}, ParamKind::kMatrix, false, 0, qkv);
    if (gpt2) o.qkv_b = add(p + "attn.qkv.b", {c.qkv_width()}, ParamKind::kBias, false, 0, qkv);
    o.proj_w = add(p + "attn.proj.w", {C, C}, ParamKind::kMatrix, true, 1, heads);
    if (gpt2) o.proj_b = add(p + "attn.proj.b", {C}, ParamKind::kBias);
    o.ln2_w = add(p + "ln2.w", {C}, ParamKind::kNorm);
    if (gpt2) o.ln2_b = add(p + "ln2.b", {C}, ParamKind::kNorm);
    o.fc_w = add(p + "mlp.fc.w", {c.fc_width(), C}, ParamKind::kMatrix, false, 0, hidden);
    if (gpt2) o.fc_b = add(p + "mlp.fc.b", {c.fc_width()}, ParamKind::kBias, false, 0, hidden);
    o.fcproj_w = add(p + "mlp.proj.w", {C, c.d_ff}, ParamKind::kMatrix, true, 1, units);
    if (gpt2) o.fcproj_b = add(p + "mlp.proj.b", {C}, ParamKind::kBias);
  }
  if (!stage_.last()) return;
  lnf_w_ = add("lnf.w", {C}, ParamKind::kNorm);
  if (gpt2) lnf_b_ = add("lnf.b", {C}, ParamKind::kNorm);
  if (!c.tied_embeddings) {
    lm_head_ = add("lm_head.w", {c.padded_vocab, C}, ParamKind::kMatrix, false, 0, vocab);
  } else if (stage_.first()) {
    lm_head_ = wte_;
  } else {
    lm_head_ = add("wte", {c.padded_vocab, C}, ParamKind::kEmbedding, false, 0, vocab);
    views_.back().pipeline_copy = true;
  }
}

namespace {

// Calls copy(whole_index, part_index, count) for each contiguous piece of
// the part within the whole tensor.
template <class Copy>
void for_each_piece(const ParamView& v, Copy&& copy) {
  if (!v.is_split()) {
    copy(std::int64_t{0}, std::int64_t{0}, v.size);
    return;
  }
  // Rows of the whole tensor before the split dimension (outer), and the
  // elements of one index of the split dimension (inner).
  std::int64_t outer = 1, inner = 1;
  for (int d = 0; d < v.split_dim; ++d) outer *= v.whole_shape[static_cast<std::size_t>(d)];
  for (std::size_t d = static_cast<std::size_t>(v.split_dim) + 1; d < v.whole_shape.size(); ++d)
    inner *= v.whole_shape[d];
  const std::int64_t whole_dim = v.whole_shape[static_cast<std::size_t>(v.split_dim)];
  const std::int64_t part_dim = v.shape[static_cast<std::size_t>(v.split_dim)];
  for (std::int64_t o = 0; o < outer; ++o) {
    std::int64_t at = 0;
    for (const IndexRun& run : v.runs) {
      copy((o * whole_dim + run.begin) * inner, (o * part_dim + at) * inner, run.length * inner);
      at += run.length;
    }
  }
}

}  // namespace

template <typename T>
void take_part(const ParamView& v, const T* whole, T* part) {
  for_each_piece(v, [&](std::int64_t w, std::int64_t p, std::int64_t n) {
    std::copy(whole + w, whole + w + n, part + p);
  });
}

template <typename T>
void put_part(const ParamView& v, const T* part, T* whole) {
  for_each_piece(v, [&](std::int64_t w, std::int64_t p, std::int64_t n) {
    std::copy(part + p, part + p + n, whole + w);
  });
}

template void take_part<float>(const ParamView&, const float*, float*);
template void take_part<double>(const ParamView&, const double*, double*);
template void put_part<float>(const ParamView&, const float*, float*);
template void put_part<double>(const ParamView&, const double*, double*);

const ParamView& ParamLayout::find(std::string_view name) const {
  for (const auto& v : views_) {
    if (v.name == name) return v;
  }
  throw std::out_of_range(fmt::format("no parameter named '{}'", name));
}

namespace {

// splitmix64: a tiny, well-mixed generator; portable bit-for-bit, unlike the
// distributions of <random>.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1].
  double uniform() { return (static_cast<double>(next() >> 11) + 1.0) * 0x1.0p-53; }
  // Box-Muller; one value per call keeps the stream simple to reason about.
  double normal() {
    const double u1 = uniform();
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  std::uint64_t state_;
};

}  // namespace

template <typename T>
void init_params(const ModelConfig& config, const ParamLayout& layout, T* params,
                 std::uint64_t seed) {
  const double std_base = 0.02;
  const double std_residual = 0.02 / std::sqrt(2.0 * config.n_layer);
  for (const auto& v : layout.views()) {
    T* p = params + v.offset;
    if (v.kind == ParamKind::kBias) {
      std::fill(p, p + v.size, T(0));
      continue;
    }
    if (v.kind == ParamKind::kNorm) {
      // LayerNorm biases are norm parameters too; they start at zero.
      const bool is_bias = v.name.ends_with(".b");
      std::fill(p, p + v.size, T(is_bias ? 0 : 1));
      continue;
    }
    // A part of a tensor draws the whole tensor's values and keeps its own.
    std::vector<T> whole;
    std::int64_t size = v.size;
    T* out = p;
    if (v.is_split()) {
      size = 1;
      for (auto d : v.whole_shape) size *= d;
      whole.assign(static_cast<std::size_t>(size), T(0));
      out = whole.data();
    }
    Rng rng(hash64(v.name, seed));
    const double std = v.residual_projection ? std_residual : std_base;
    std::int64_t count = size;
    if (v.name == "wte" || v.name == "lm_head.w") {
      // Padded vocabulary rows stay zero.
      count = static_cast<std::int64_t>(config.vocab_size) * v.whole_shape[1];
      std::fill(out + count, out + size, T(0));
    }
    for (std::int64_t i = 0; i < count; ++i) out[i] = static_cast<T>(std * rng.normal());
    if (v.is_split()) take_part(v, whole.data(), p);
  }
}

template void init_params<float>(const ModelConfig&, const ParamLayout&, float*, std::uint64_t);
template void init_params<double>(const ModelConfig&, const ParamLayout&, double*, std::uint64_t);

}  // namespace borealis
