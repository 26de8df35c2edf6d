// The blending rule of the "fast" order (--order fast, the default; the
// "megatron" order has Megatron's own rule, data/megatron_order.h): the order
// in which samples are drawn from several weighted sources.
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
// Each step costs O(1) on average: a source's next pick is kept in a calendar
// of buckets, by the step it becomes eligible while it waits, then by the
// integer part of its due time. Picks due in one unit of time number about
// one (the weights sum to 1), so a step looks at a bucket or two. Heaps
// (O(log K)) take over where the calendar would be too long (weights below
// about 1/2^21 of the total) or where rounding leaves no source eligible; a
// vectorized plain scan serves up to 8 sources. The choices are exactly those of the
// plain O(K) scan (integer release times, the same floating-point expressions).
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
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
  // The weights divided by their sum.
  const std::vector<double>& weights() const { return weights_; }
  std::uint64_t steps() const { return step_; }

 private:
  static constexpr std::size_t kScanSources = 8;
  static constexpr std::uint64_t kMaxBuckets = std::uint64_t{1} << 22;
  static constexpr std::uint32_t kNone = ~std::uint32_t{0};
  enum class Mode { scan, calendar, heaps };

  std::size_t next_by_scan();
  std::size_t next_by_calendar();
  std::size_t next_by_heaps();
  void use_heaps();  // leaves the calendar for the heaps, with the same state
  bool ready_in_calendar(std::size_t k);
  bool wait_in_calendar(std::size_t k, std::uint64_t release);
  // The first step at which k is eligible again.
  std::uint64_t release(std::size_t k,
                        double quotient = std::numeric_limits<double>::quiet_NaN()) const;
  double deadline(std::size_t k) const { return static_cast<double>(counts_[k] + 1) / weights_[k]; }

  std::vector<double> weights_;
  std::vector<std::uint64_t> counts_;
  std::uint64_t step_ = 0;
  Mode mode_ = Mode::scan;
  std::vector<double> due_;  // (count + 1) / w, infinite for zero weights
  // Scan: weights, counts (as doubles) and due times padded with zero
  // weights to a multiple of 8 sources.
  std::vector<double> scan_weights_, scan_taken_, scan_due_;
  // Calendar: circular lists of sources (link_), waiting by release step and
  // ready by floor(due); every live key lies in a window shorter than the
  // calendar, so a bucket holds one key. Ready lists are sorted.
  std::uint64_t mask_ = 0;
  std::vector<std::uint32_t> waiting_at_, ready_at_, ready_tail_, link_;
  std::uint64_t low_ = 0, high_ = 0;  // bounds on the ready keys
  std::size_t ready_count_ = 0;
  using Ready = std::pair<double, std::size_t>;           // deadline, source
  using Waiting = std::pair<std::uint64_t, std::size_t>;  // release step, source
  std::priority_queue<Ready, std::vector<Ready>, std::greater<>> ready_;
  std::priority_queue<Waiting, std::vector<Waiting>, std::greater<>> waiting_;
};

}  // namespace borealis
