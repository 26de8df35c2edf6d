#include "data/blend.h"

#include <cmath>
#include <limits>
#include <stdexcept>

namespace borealis {

Blender::Blender(std::vector<double> weights)
    : weights_(std::move(weights)), counts_(weights_.size(), 0) {
  double total = 0;
  for (const double w : weights_) {
    if (!(w >= 0)) throw std::invalid_argument("Blender: negative weight");
    total += w;
  }
  if (!(total > 0)) throw std::invalid_argument("Blender: the weights add up to zero");
  for (double& w : weights_) w /= total;
  for (std::size_t k = 0; k < weights_.size(); ++k) {
    if (weights_[k] > 0) waiting_.emplace(release(k), k);
  }
}

// The smallest step t with counts < w (t + 1), found with the very expression
// the plain scan evaluates, so that both agree to the last bit.
std::uint64_t Blender::release(std::size_t k) const {
  const double c = static_cast<double>(counts_[k]);
  const double w = weights_[k];
  double guess = std::floor(c / w) - 1;
  std::uint64_t t = guess > 0 ? static_cast<std::uint64_t>(guess) : 0;
  while (!(c < w * static_cast<double>(t + 1))) ++t;
  while (t > 0 && c < w * static_cast<double>(t)) --t;
  return t;
}

std::size_t Blender::next() {
  while (!waiting_.empty() && waiting_.top().first <= step_) {
    const std::size_t k = waiting_.top().second;
    waiting_.pop();
    ready_.emplace(deadline(k), k);
  }
  std::size_t k = 0;
  if (!ready_.empty()) {
    k = ready_.top().second;
    ready_.pop();
  } else {
    // Only rounding (weights summing to slightly under 1) leaves no source
    // behind its share; take the earliest due, as the plain scan does.
    double best = std::numeric_limits<double>::infinity();
    for (std::size_t j = 0; j < weights_.size(); ++j) {
      if (weights_[j] > 0 && deadline(j) < best) best = deadline(j), k = j;
    }
    std::vector<Waiting> rest;
    while (!waiting_.empty()) {
      if (waiting_.top().second != k) rest.push_back(waiting_.top());
      waiting_.pop();
    }
    for (const auto& r : rest) waiting_.push(r);
  }
  ++counts_[k];
  ++step_;
  const std::uint64_t r = release(k);
  if (r <= step_) {
    ready_.emplace(deadline(k), k);
  } else {
    waiting_.emplace(r, k);
  }
  return k;
}

}  // namespace borealis
