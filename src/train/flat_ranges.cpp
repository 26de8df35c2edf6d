#include "train/flat_ranges.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace borealis {

std::vector<RangeCopy> plan_range_copies(std::span<const FlatRange> stored, FlatRange want) {
  if (want.begin < 0 || want.end < want.begin) {
    throw std::invalid_argument(fmt::format("bad range [{}, {})", want.begin, want.end));
  }
  for (std::size_t i = 0; i < stored.size(); ++i) {
    if (stored[i].begin < 0 || stored[i].end < stored[i].begin ||
        (i > 0 && stored[i].begin < stored[i - 1].end)) {
      throw std::invalid_argument(
          fmt::format("stored range {} [{}, {}) is out of order or overlaps the one before", i,
                      stored[i].begin, stored[i].end));
    }
  }
  std::vector<RangeCopy> out;
  // The first stored range that ends after want.begin; ranges are sorted,
  // so their ends are too.
  auto it = std::upper_bound(stored.begin(), stored.end(), want.begin,
                             [](std::int64_t x, const FlatRange& r) { return x < r.end; });
  std::int64_t at = want.begin;  // the next element of want to find
  for (; it != stored.end() && at < want.end; ++it) {
    if (it->size() == 0) continue;
    if (it->begin > at) break;  // a gap
    const std::int64_t until = std::min(it->end, want.end);
    out.push_back({static_cast<std::size_t>(it - stored.begin()), at - it->begin, at - want.begin,
                   until - at});
    at = until;
  }
  if (at < want.end) {
    throw std::invalid_argument(fmt::format("the stored ranges do not cover element {} of [{}, {})",
                                            at, want.begin, want.end));
  }
  return out;
}

}  // namespace borealis
