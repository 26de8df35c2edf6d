#include "optim/adamw.h"

#include "kernels/cpu/vec_math.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace borealis {

AdamW::AdamW(const ParamLayout& layout, const AdamWConfig& config)
    : AdamW(layout, config, 0, layout.total()) {}

AdamW::AdamW(const ParamLayout& layout, const AdamWConfig& config, std::int64_t begin,
             std::int64_t end)
    : config_(config), begin_(begin), end_(end) {
  if (begin < 0 || begin > end || end > layout.total()) {
    throw std::invalid_argument("AdamW: range outside the parameter buffer");
  }
  for (const auto& view : layout.views()) {
    const std::int64_t lo = std::max(view.offset, begin);
    const std::int64_t hi = std::min(view.offset + view.size, end);
    if (lo < hi) ranges_.push_back({lo - begin, hi - lo, decays(view)});
  }
  m_.assign(static_cast<std::size_t>(end - begin), 0.0f);
  v_.assign(static_cast<std::size_t>(end - begin), 0.0f);
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
  const float b1 = config_.beta1;
  const float b2 = config_.beta2;
  const double t = static_cast<double>(steps_);
  const float c1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(b1), t)));
  const float c2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(b2), t)));
  const float eps = config_.eps;
  float* m = m_.data();
  float* v = v_.data();
  for (const Range& r : ranges_) {
    const float wd = r.decay ? config_.weight_decay : 0.0f;
    const std::int64_t end = r.offset + r.size;
#pragma omp parallel for simd schedule(static) if (cpu::worth_threads(r.size))
    for (std::int64_t i = r.offset; i < end; ++i) {
      const float g = grads[i] * grad_scale;
      const float mi = b1 * m[i] + (1.0f - b1) * g;
      const float vi = b2 * v[i] + (1.0f - b2) * g * g;
      m[i] = mi;
      v[i] = vi;
      params[i] -= lr * (mi * c1 / (std::sqrt(vi * c2) + eps) + wd * params[i]);
    }
  }
}

double sum_of_squares(const float* grads, std::int64_t count) {
  constexpr std::int64_t kBlock = 1 << 16;
  const std::int64_t blocks = (count + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<std::size_t>(blocks), 0.0);
#pragma omp parallel for schedule(static) if (cpu::worth_threads(count))
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::int64_t end = std::min(count, (b + 1) * kBlock);
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (std::int64_t i = b * kBlock; i < end; ++i) {
      s += static_cast<double>(grads[i]) * static_cast<double>(grads[i]);
    }
    partial[static_cast<std::size_t>(b)] = s;
  }
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

double global_norm(const float* grads, std::int64_t count) {
  return std::sqrt(sum_of_squares(grads, count));
}

float clip_scale(double norm, double max_norm) {
  return max_norm > 0.0 && norm > max_norm ? static_cast<float>(max_norm / (norm + 1e-6)) : 1.0f;
}

double clip_grad_norm(float* grads, std::int64_t count, double max_norm) {
  const double norm = global_norm(grads, count);
  const float scale = clip_scale(norm, max_norm);
  if (scale != 1.0f) {
#pragma omp parallel for simd schedule(static) if (cpu::worth_threads(count))
    for (std::int64_t i = 0; i < count; ++i) grads[i] *= scale;
  }
  return norm;
}

}  // namespace borealis
