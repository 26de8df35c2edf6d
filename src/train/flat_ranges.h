// Contiguous element ranges of a flat buffer (the parameter layout), and
// which pieces of several stored ranges make up another one.
//
// A checkpoint stores the optimizer moments either per tensor
// (optimizer.safetensors: one stored range per tensor) or per rank of a
// ZeRO-1 run (one range per shard file). A run resuming on another layout
// needs a range of its own, [begin, end): plan_range_copies() says which
// part of which stored range goes where, so that a rank reads only the
// pieces that overlap its range.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace borealis {

// Elements [begin, end) of a flat buffer.
struct FlatRange {
  std::int64_t begin = 0;
  std::int64_t end = 0;
  std::int64_t size() const { return end - begin; }
  bool operator==(const FlatRange&) const = default;
};

// Copy `count` elements from element `source_offset` of stored range
// `source` (an index into the ranges passed) to element `dest_offset` of
// the destination (relative to the wanted range's begin).
struct RangeCopy {
  std::size_t source = 0;
  std::int64_t source_offset = 0;
  std::int64_t dest_offset = 0;
  std::int64_t count = 0;
  bool operator==(const RangeCopy&) const = default;
};

// The copies that assemble `want` from `stored`, in ascending order; empty
// stored ranges and ones outside `want` take no copy. `stored` must be sorted
// and must not overlap; throws std::invalid_argument otherwise, or when they
// do not cover every element of `want`.
std::vector<RangeCopy> plan_range_copies(std::span<const FlatRange> stored, FlatRange want);

}  // namespace borealis
