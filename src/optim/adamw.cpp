#include "optim/adamw.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "core/text.h"

namespace borealis {

AdamW::AdamW(Backend<float>& backend, const ParamLayout& layout, const AdamWConfig& config)
    : AdamW(backend, layout, config, 0, layout.total()) {}

AdamW::AdamW(Backend<float>& backend, const ParamLayout& layout, const AdamWConfig& config,
             std::int64_t begin, std::int64_t end)
    : backend_(&backend), config_(config), begin_(begin), end_(end) {
  if (begin < 0 || begin > end || end > layout.total()) {
    throw std::invalid_argument("AdamW: range outside the parameter buffer");
  }
  // One range per run of adjacent tensors that decay alike: the update is
  // elementwise, so one call over the run gives the same bits as one call
  // per tensor, in fewer calls (each a kernel launch on a GPU).
  for (const auto& view : layout.views()) {
    const std::int64_t lo = std::max(view.offset, begin);
    const std::int64_t hi = std::min(view.offset + view.size, end);
    if (lo >= hi) continue;
    const bool decay = decays(view);
    if (!ranges_.empty() && ranges_.back().decay == decay &&
        ranges_.back().offset + ranges_.back().size == lo - begin) {
      ranges_.back().size += hi - lo;
    } else {
      ranges_.push_back({lo - begin, hi - lo, decay});
    }
  }
  const std::int64_t n = end - begin;
  allocate_for(fmt::format("the optimizer's moments (2 x {} floats) need {}", n,
                           format_bytes(2 * static_cast<std::uint64_t>(n) * sizeof(float))),
               "ZeRO-1 (dist.zero = 1) shards them over the data-parallel ranks", [&] {
                 m_ = BackendArray<float>(backend, n);
                 v_ = BackendArray<float>(backend, n);
               });
}

bool AdamW::decays(const ParamView& view) const {
  switch (view.kind) {
    case ParamKind::kMatrix:
      return true;
    case ParamKind::kEmbedding:
      return config_.decay_embeddings;
    case ParamKind::kNorm:
      return config_.decay_norms;
    case ParamKind::kBias:
      return config_.decay_biases;
  }
  return false;
}

void AdamW::step(float* params, const float* grads, float lr, float grad_scale) {
  ++steps_;
  const double t = static_cast<double>(steps_);
  Backend<float>::AdamWUpdate u{};
  u.lr = lr;
  u.beta1 = config_.beta1;
  u.beta2 = config_.beta2;
  u.eps = config_.eps;
  u.grad_scale = grad_scale;
  u.c1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(config_.beta1), t)));
  u.c2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(config_.beta2), t)));
  // One call per run of tensors that decay alike (or piece of one, in a
  // shard): decay is per tensor.
  for (const Range& r : ranges_) {
    u.weight_decay = r.decay ? config_.weight_decay : 0.0f;
    backend_->adamw_update(params + r.offset, grads + r.offset, m_.data() + r.offset,
                           v_.data() + r.offset, r.size, u);
  }
}

double global_norm(Backend<float>& backend, const float* grads, std::int64_t count) {
  return std::sqrt(backend.sum_of_squares(grads, count));
}

float clip_scale(double norm, double max_norm) {
  return max_norm > 0.0 && norm > max_norm ? static_cast<float>(max_norm / (norm + 1e-6)) : 1.0f;
}

double clip_grad_norm(Backend<float>& backend, float* grads, std::int64_t count, double max_norm) {
  const double norm = global_norm(backend, grads, count);
  const float scale = clip_scale(norm, max_norm);
  if (scale != 1.0f) backend.scale(grads, scale, count);
  return norm;
}

}  // namespace borealis
