#include "model/params.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>

#include "core/hash.h"

namespace borealis {

std::int64_t ParamLayout::add(std::string name, std::vector<std::int64_t> shape, ParamKind kind,
                              bool residual_projection) {
  ParamView v;
  v.name = std::move(name);
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

ParamLayout::ParamLayout(const ModelConfig& c) {
  const bool gpt2 = c.family == ModelFamily::kGpt2;
  const std::int64_t C = c.d_model;
  wte_ = add("wte", {c.padded_vocab, C}, ParamKind::kEmbedding);
  if (gpt2) wpe_ = add("wpe", {c.max_seq, C}, ParamKind::kEmbedding);
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = fmt::format("h.{}.", l);
    LayerOffsets o;
    o.ln1_w = add(p + "ln1.w", {C}, ParamKind::kNorm);
    if (gpt2) o.ln1_b = add(p + "ln1.b", {C}, ParamKind::kNorm);
    o.qkv_w = add(p + "attn.qkv.w", {c.qkv_width(), C}, ParamKind::kMatrix);
    if (gpt2) o.qkv_b = add(p + "attn.qkv.b", {c.qkv_width()}, ParamKind::kBias);
    o.proj_w = add(p + "attn.proj.w", {C, C}, ParamKind::kMatrix, true);
    if (gpt2) o.proj_b = add(p + "attn.proj.b", {C}, ParamKind::kBias);
    o.ln2_w = add(p + "ln2.w", {C}, ParamKind::kNorm);
    if (gpt2) o.ln2_b = add(p + "ln2.b", {C}, ParamKind::kNorm);
    o.fc_w = add(p + "mlp.fc.w", {c.fc_width(), C}, ParamKind::kMatrix);
    if (gpt2) o.fc_b = add(p + "mlp.fc.b", {c.fc_width()}, ParamKind::kBias);
    o.fcproj_w = add(p + "mlp.proj.w", {C, c.d_ff}, ParamKind::kMatrix, true);
    if (gpt2) o.fcproj_b = add(p + "mlp.proj.b", {C}, ParamKind::kBias);
    layers_.push_back(o);
  }
  lnf_w_ = add("lnf.w", {C}, ParamKind::kNorm);
  if (gpt2) lnf_b_ = add("lnf.b", {C}, ParamKind::kNorm);
  lm_head_ = c.tied_embeddings ? wte_ : add("lm_head.w", {c.padded_vocab, C}, ParamKind::kMatrix);
}

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
    Rng rng(hash64(v.name, seed));
    const double std = v.residual_projection ? std_residual : std_base;
    std::int64_t count = v.size;
    if (v.name == "wte" || v.name == "lm_head.w") {
      // Padded vocabulary rows stay zero.
      count = static_cast<std::int64_t>(config.vocab_size) * v.shape[1];
      std::fill(p + count, p + v.size, T(0));
    }
    for (std::int64_t i = 0; i < count; ++i) p[i] = static_cast<T>(std * rng.normal());
  }
}

template void init_params<float>(const ModelConfig&, const ParamLayout&, float*, std::uint64_t);
template void init_params<double>(const ModelConfig&, const ParamLayout&, double*, std::uint64_t);

}  // namespace borealis
