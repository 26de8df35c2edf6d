// Weighted blending: the order in which samples are drawn from several sources.
//
// Blender emits an infinite sequence of source indices whose counts follow
// the weights as closely as possible: after n picks, every source k has been
// chosen within one sample of weights[k] * n (strictly: |count - w n| < 1).
// The rule is the uniprocessor Pfair schedule: at step t, a source is
// eligible while it is behind its share at the end of the step
// (count < w (t + 1)); among the eligible, the one whose next sample is due
// earliest ((count + 1) / w, lowest index on ties) is picked. It is the
// deterministic "furthest behind its target share" rule with a proof of the
// one-sample bound, which Megatron's greedy rule (largest w t - count) lacks.
// Heaps make each step O(log K) (a plain scan serves up to 16 sources); the choices are exactly
// those of the plain O(K) scan (integer release times, the same floating-point expressions).
#pragma once

#include <cstdint>
#include <functional>
#include <queue>
#include <utility>
#include <vector>

namespace borealis {

class Blender {
 public:
  // `weights` must be non-negative with a positive sum; they are divided by it.
  explicit Blender(std::vector<double> weights);

  // The next source; `counts()` are updated.
  std::size_t next();
  const std::vector<std::uint64_t>& counts() const { return counts_; }
  std::uint64_t steps() const { return step_; }

 private:
  static constexpr std::size_t kScanSources = 16;
  std::size_t next_by_scan();
  std::uint64_t release(std::size_t k) const;  // first step at which k is eligible again
  double deadline(std::size_t k) const { return static_cast<double>(counts_[k] + 1) / weights_[k]; }

  std::vector<double> weights_;
  std::vector<std::uint64_t> counts_;
  std::uint64_t step_ = 0;
  bool scan_ = false;
  std::vector<double> due_;                      // (count + 1) / w, infinite for zero weights
  using Ready = std::pair<double, std::size_t>;  // deadline, source
  using Waiting = std::pair<std::uint64_t, std::size_t>;  // release step, source
  std::priority_queue<Ready, std::vector<Ready>, std::greater<>> ready_;
  std::priority_queue<Waiting, std::vector<Waiting>, std::greater<>> waiting_;
};

}  // namespace borealis
