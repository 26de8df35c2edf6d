// Elementwise math the compiler can vectorize inside OpenMP simd loops.
//
// glibc's expf is a function call that blocks vectorization; softmax over
// the vocabulary and attention scores call exp hundreds of millions of times
// a step. fast_exp is a Cephes-style range reduction plus a degree-6
// polynomial (about 2 ulp for float) written with plain arithmetic and a
// bit cast, so a loop over it becomes AVX2/FMA code. Double precision (used
// by the gradient checks) keeps the libm functions.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace borealis::cpu {

// Below this much work (elements touched) a loop runs on the calling thread:
// waking the team costs more than it saves, and on a busy machine every
// barrier of a tiny parallel region can wait for a descheduled thread.
inline bool worth_threads(std::int64_t work) {
  return work >= (std::int64_t{1} << 15);
}

inline float fast_expf(float x) {
  // Clamp so that 2^n stays a normal float; exp(-87.3) ~ 1e-38 is zero for softmax.
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  // n = round(x / ln 2) by the magic-number trick: adding 1.5 * 2^23 pushes
  // the fraction bits out, subtracting it back leaves the nearest integer.
  // std::floor would do, but GCC keeps floor scalar unless traps are off
  // (-fno-trapping-math), which turned every loop calling this into scalar
  // code; plain adds vectorize under any flags.
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  float r = x - n * 0.693359375f;  // ln 2 split in two for an exact product
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

// max(a, b) for simd max-reductions. GCC leaves a loop of std::max (which
// is `a < b ? b : a`) scalar even under `omp simd reduction(max: ...)`; this
// form becomes vmaxps. A NaN in b propagates, as it should in a loss.
template <typename T>
inline T vmax(T a, T b) {
  return a > b ? a : b;
}

template <typename T>
inline T vexp(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return fast_expf(x);
  } else {
    return std::exp(x);
  }
}

template <typename T>
inline T vtanh(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return 1.0f - 2.0f / (fast_expf(2.0f * x) + 1.0f);
  } else {
    return std::tanh(x);
  }
}

}  // namespace borealis::cpu
