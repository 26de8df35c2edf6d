// Central finite differences for gradient checks, in double precision.
//
// With eps = 1e-5 the truncation error of a central difference is O(eps^2)
// ~ 1e-10 relative to the third derivative and the rounding error is about
// 1e-16 / 1e-5 = 1e-11, so analytic and numeric gradients of a correct double
// implementation agree to ~1e-8; a wrong term shows up at 1e-2 or worse.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/threads.h"

namespace borealis::test {

// Runs a scope on one CPU thread. Finite differences run the forward pass
// thousands of times on tiny shapes, where each parallel region costs more
// than its work (and far more when other processes compete for the cores);
// the math checked does not depend on the thread count.
class SingleThreadScope {
 public:
  SingleThreadScope() : saved_(cpu_threads()) { set_cpu_threads(1); }
  ~SingleThreadScope() { set_cpu_threads(saved_); }
  SingleThreadScope(const SingleThreadScope&) = delete;
  SingleThreadScope& operator=(const SingleThreadScope&) = delete;

 private:
  int saved_;
};

// Deterministic pseudo-random values in [-scale, scale).
inline std::vector<double> random_vector(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  std::vector<double> v(n);
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& x : v) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    x = scale * (static_cast<double>(s >> 11) * 0x1.0p-53 * 2.0 - 1.0);
  }
  return v;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Compares analytic[i] with the central difference of loss() with respect to
// x[i], for the indices in `which` (all when empty). x is restored.
inline void expect_gradient(const std::string& what, double* x, std::size_t n,
                            const std::vector<double>& analytic,
                            const std::function<double()>& loss,
                            std::vector<std::size_t> which = {}) {
  if (which.empty()) {
    for (std::size_t i = 0; i < n; ++i) which.push_back(i);
  }
  constexpr double kEps = 1e-5;
  int failures = 0;
  for (std::size_t i : which) {
    const double saved = x[i];
    x[i] = saved + kEps;
    const double up = loss();
    x[i] = saved - kEps;
    const double down = loss();
    x[i] = saved;
    const double numeric = (up - down) / (2 * kEps);
    const double tol = 1e-7 + 1e-6 * std::max(std::abs(numeric), std::abs(analytic[i]));
    if (std::abs(numeric - analytic[i]) > tol && failures++ < 5) {
      ADD_FAILURE() << what << "[" << i << "]: analytic " << analytic[i] << " numeric " << numeric;
    }
  }
  EXPECT_EQ(failures, 0) << what;
}

}  // namespace borealis::test
