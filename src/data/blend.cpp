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
  scan_ = weights_.size() <= kScanSources;
  for (std::size_t k = 0; k < weights_.size(); ++k) {
    if (weights_[k] > 0 && !scan_) waiting_.emplace(release(k), k);
    due_.push_back(weights_[k] > 0 ? deadline(k) : std::numeric_limits<double>::infinity());
  }
}

// The plain scan, for few sources, where it beats the heaps.
std::size_t Blender::next_by_scan() {
  const double end = static_cast<double>(step_ + 1);
  std::size_t best = weights_.size();
  for (std::size_t k = 0; k < weights_.size(); ++k) {
    if (static_cast<double>(counts_[k]) < weights_[k] * end &&
        (best == weights_.size() || due_[k] < due_[best])) {
      best = k;
    }
  }
  if (best == weights_.size()) {
    for (std::size_t k = 0; k < weights_.size(); ++k) {
      if (weights_[k] > 0 && (best == weights_.size() || due_[k] < due_[best])) best = k;
    }
  }
  ++counts_[best];
  ++step_;
  due_[best] = deadline(best);
  return best;
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
  if (scan_) return next_by_scan();
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
