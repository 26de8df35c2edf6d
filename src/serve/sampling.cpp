#include "serve/sampling.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace borealis {

namespace {

bool greedy(const SamplingParams& p) {
  return p.temperature == 0.0f || p.top_k == 1;
}

// Most likely first; equal logits by lower id, so the order is total.
bool before(const TokenProb& a, const TokenProb& b) {
  return a.prob > b.prob || (a.prob == b.prob && a.id < b.id);
}

}  // namespace

void SamplingParams::validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    throw Error(fmt::format("temperature must be a finite number >= 0, got {}", temperature),
                "temperature");
  }
  if (top_k < 0) throw Error(fmt::format("top_k must be >= 0, got {}", top_k), "top_k");
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    throw Error(fmt::format("top_p must be in (0, 1], got {}", top_p), "top_p");
  }
}

std::int32_t argmax(std::span<const float> logits) {
  if (logits.empty()) throw Error("no logits to choose from", "sampling");
  std::size_t best = 0;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    if (!std::isfinite(logits[i])) {
      throw Error(fmt::format("logit {} of token {} is not finite", logits[i], i), "sampling");
    }
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<std::int32_t>(best);
}

std::vector<TokenProb> sampling_distribution(std::span<const float> logits,
                                             const SamplingParams& params) {
  params.validate();
  const std::int32_t top = argmax(logits);  // also checks the logits
  if (greedy(params)) return {{top, 1.0}};

  // Scaled logits first (prob holds them until the softmax).
  std::vector<TokenProb> cand(logits.size());
  const double inv_t = 1.0 / static_cast<double>(params.temperature);
  for (std::size_t i = 0; i < logits.size(); ++i) {
    cand[i] = {static_cast<std::int32_t>(i), static_cast<double>(logits[i]) * inv_t};
  }
  const std::size_t k = params.top_k > 0
                            ? std::min(cand.size(), static_cast<std::size_t>(params.top_k))
                            : cand.size();
  if (k < cand.size()) {
    std::nth_element(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(k), cand.end(),
                     before);
    cand.resize(k);
  }
  std::sort(cand.begin(), cand.end(), before);

  const double mx = cand.front().prob;
  double sum = 0;
  for (auto& c : cand) {
    c.prob = std::exp(c.prob - mx);
    sum += c.prob;
  }
  // Nucleus: the shortest prefix reaching top_p of the (top-k) mass.
  std::size_t keep = cand.size();
  if (params.top_p < 1.0f) {
    const double target = static_cast<double>(params.top_p) * sum;
    double cum = 0;
    for (std::size_t i = 0; i < cand.size(); ++i) {
      cum += cand[i].prob;
      if (cum >= target) {
        keep = i + 1;
        break;
      }
    }
    cand.resize(keep);
    sum = cum;
  }
  for (auto& c : cand) c.prob /= sum;
  return cand;
}

Sampler::Sampler(const SamplingParams& params, std::uint64_t seed) : params_(params), state_(seed) {
  params_.validate();
}

double Sampler::uniform() {
  std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

std::int32_t Sampler::sample(std::span<const float> logits) {
  if (greedy(params_)) return argmax(logits);
  const std::vector<TokenProb> dist = sampling_distribution(logits, params_);
  // Drawn even when one token survives, so the stream advances one draw per token.
  const double u = uniform();
  double cum = 0;
  for (const auto& c : dist) {
    cum += c.prob;
    if (u < cum) return c.id;
  }
  return dist.back().id;  // u within rounding of 1
}

LogSoftmax::LogSoftmax(std::span<const float> row) {
  const double mx = *std::max_element(row.begin(), row.end());
  double sum = 0;
  for (float v : row) sum += std::exp(static_cast<double>(v) - mx);
  lse = mx + std::log(sum);
}

std::vector<std::pair<std::int32_t, double>> top_logprobs(std::span<const float> row,
                                                          const LogSoftmax& ls, int n) {
  std::vector<std::int32_t> ids(row.size());
  std::iota(ids.begin(), ids.end(), 0);
  const auto k = std::min<std::size_t>(static_cast<std::size_t>(n), ids.size());
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end(),
                    [&](std::int32_t a, std::int32_t b) {
                      const float x = row[static_cast<std::size_t>(a)];
                      const float y = row[static_cast<std::size_t>(b)];
                      return x > y || (x == y && a < b);
                    });
  std::vector<std::pair<std::int32_t, double>> out;
  for (std::size_t i = 0; i < k; ++i) out.emplace_back(ids[i], ls.of(row, ids[i]));
  return out;
}

}  // namespace borealis
