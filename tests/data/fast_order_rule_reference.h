// The mixture blending rule (data/fast_order_rule.h) written as a plain O(K) scan over
// the sources, for tests to check the fast implementations against: each
// step picks the source furthest behind its target share.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "data/fast_order_rule.h"

namespace borealis::test {

inline std::vector<std::size_t> reference_blend(std::vector<double> w, std::uint64_t n) {
  double total = 0;
  for (const double x : w) total += x;
  for (double& x : w) x /= total;
  std::vector<std::uint64_t> c(w.size(), 0);
  std::vector<std::size_t> out;
  for (std::uint64_t t = 0; t < n; ++t) {
    std::size_t best = w.size();
    for (std::size_t k = 0; k < w.size(); ++k) {
      if (w[k] > 0 && static_cast<double>(c[k]) < w[k] * static_cast<double>(t + 1)) {
        const double d = static_cast<double>(c[k] + 1) / w[k];
        if (best == w.size() || d < static_cast<double>(c[best] + 1) / w[best]) best = k;
      }
    }
    if (best == w.size()) {  // rounding left nobody behind: earliest due overall
      for (std::size_t k = 0; k < w.size(); ++k) {
        if (w[k] > 0 && (best == w.size() || static_cast<double>(c[k] + 1) / w[k] <
                                                 static_cast<double>(c[best] + 1) / w[best])) {
          best = k;
        }
      }
    }
    ++c[best];
    out.push_back(best);
  }
  return out;
}

// Runs a Blender over `w` for n steps against reference_blend, and checks
// every `check_every` steps (and after the last) that each source's count
// is within one of its share; `what` names the case in failures. Use it
// under ASSERT_NO_FATAL_FAILURE to stop at the first failing case.
inline void expect_blender_follows_reference(const std::vector<double>& w, std::uint64_t n,
                                             std::uint64_t check_every, const std::string& what) {
  double total = 0;
  for (const double x : w) total += x;
  const auto expect = reference_blend(w, n);
  Blender b(w);
  std::vector<std::uint64_t> c(w.size(), 0);
  for (std::uint64_t t = 0; t < n; ++t) {
    const std::size_t got = b.next();
    ASSERT_EQ(got, expect[t]) << what << " step " << t;
    ++c[got];
    if (t % check_every == 0 || t + 1 == n) {
      for (std::size_t j = 0; j < w.size(); ++j) {
        ASSERT_LT(std::abs(static_cast<double>(c[j]) - w[j] / total * static_cast<double>(t + 1)),
                  1.0)
            << what << " step " << t << " source " << j;
      }
    }
  }
  EXPECT_EQ(b.counts(), c) << what;
}

}  // namespace borealis::test
