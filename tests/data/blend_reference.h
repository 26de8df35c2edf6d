// The mixture blending rule (data/blend.h) written as a plain O(K) scan over
// the sources, for tests to check the fast implementations against: each
// step picks the source furthest behind its target share.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

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

}  // namespace borealis::test
