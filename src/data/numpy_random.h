// numpy's legacy RandomState, bit for bit, for what Megatron's index building
// uses: seeding with an integer, bounded integers, shuffle and permutation.
//
// - The generator is MT19937. RandomState(seed) with an integer seed in
//   [0, 2^32) fills the state with the reference init_genrand recurrence
//   (numpy's mt19937_seed); a 64-bit draw is two 32-bit draws, the first in
//   the high half.
// - interval(max) is numpy's random_interval: the smallest all-ones mask >= max,
//   then draws masked by it until one is <= max (rejection). A 32-bit draw
//   serves when max fits in 32 bits, a 64-bit draw otherwise. It is what
//   randint(0, max + 1) gives with the legacy (masked) bounded integers.
// - shuffle is numpy's Fisher-Yates for a 1-D array: for i from n - 1 down to
//   1, swap element i with element interval(i). The element type does not
//   change the draws.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace borealis {

class NumpyRandomState {
 public:
  // seed must be < 2^32 (numpy raises ValueError otherwise).
  explicit NumpyRandomState(std::uint32_t seed);

  std::uint32_t next32() {
    if (pos_ == kN) twist();
    return tempered_[pos_++];
  }
  std::uint64_t next64() {
    const std::uint64_t high = next32();
    return (high << 32) | next32();
  }
  // A uniform integer in [0, max].
  std::uint64_t interval(std::uint64_t max) {
    if (max == 0) return 0;
    std::uint64_t mask = max;
    for (unsigned s = 1; s < 64; s *= 2) mask |= mask >> s;
    if (max <= 0xffffffffu) {
      const auto m32 = static_cast<std::uint32_t>(mask);
      std::uint32_t v;
      while ((v = next32() & m32) > max) {
      }
      return v;
    }
    std::uint64_t v;
    while ((v = next64() & mask) > max) {
    }
    return v;
  }
  // The draws do not depend on the data, so they are made a batch ahead and
  // the elements they pick are prefetched; the swaps happen in numpy's order.
  template <class T>
  void shuffle(T* data, std::size_t n) {
    constexpr std::size_t kAhead = 32;
    std::size_t picks[kAhead];
    for (std::size_t i = n; i > 1;) {
      const std::size_t count = std::min(kAhead, i - 1);
      if (i - 1 <= 0xffffffffu) {
        // One loop iteration per draw, not per pick: a rejected draw only
        // leaves b where it is, so there is no branch to mispredict.
        for (std::size_t b = 0; b < count;) {
          const auto max = static_cast<std::uint32_t>(i - 1 - b);
          const std::uint32_t v = next32() & (~std::uint32_t{0} >> __builtin_clz(max));
          picks[b] = v;
          b += v <= max;
        }
      } else {
        for (std::size_t b = 0; b < count; ++b) picks[b] = pick(i - 1 - b);
      }
      for (std::size_t b = 0; b < count; ++b) __builtin_prefetch(data + picks[b], 1);
      for (std::size_t b = 0; b < count; ++b) std::swap(data[i - 1 - b], data[picks[b]]);
      i -= count;
    }
  }
  template <class T>
  void shuffle(std::vector<T>& v) {
    shuffle(v.data(), v.size());
  }
  // np.random.RandomState.permutation(n): arange(n) shuffled.
  std::vector<std::int64_t> permutation(std::size_t n);

  // The 624 words of state and the position in them (numpy's get_state()).
  const std::array<std::uint32_t, 624>& state() const { return state_; }
  std::size_t position() const { return pos_; }

 private:
  static constexpr std::size_t kN = 624;
  // interval(i) for i >= 1, its 32-bit path inlined.
  std::size_t pick(std::size_t i) {
    if (i > 0xffffffffu) return static_cast<std::size_t>(interval(i));
    const auto max = static_cast<std::uint32_t>(i);
    const std::uint32_t mask = ~std::uint32_t{0} >> __builtin_clz(max);
    std::uint32_t v;
    while ((v = next32() & mask) > max) {
    }
    return v;
  }
  void twist();

  std::array<std::uint32_t, kN> state_{};
  // The outputs of the current state, tempered all at once by twist() (a
  // loop the compiler vectorizes; one word at a time costs more).
  std::array<std::uint32_t, kN> tempered_{};
  std::size_t pos_ = kN;
};

// np.sum of a float64 array, as numpy adds it: pairwise summation in blocks
// of 8 partial sums (the result can differ from a left-to-right sum in the
// last bits).
double numpy_sum(const double* a, std::size_t n);

}  // namespace borealis
