// Whole-dataset operations behind `borealis data merge|inspect`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "data/indexed_dataset.h"

namespace borealis {

// Concatenates datasets of one token type into `out` (documents in input
// order; multi-sequence documents are kept). Returns the documents written.
std::uint64_t merge_datasets(const std::vector<std::filesystem::path>& inputs,
                             const std::filesystem::path& out);

struct LengthStats {
  std::uint64_t sequences = 0;
  std::uint64_t tokens = 0;
  double mean = 0;
  // Sequence lengths at 0, 1, 10, 50, 90, 99, 100 percent.
  std::vector<std::pair<double, std::int64_t>> percentiles;
  // Sequences whose length is in [2^k, 2^(k+1)), k = 0..; index 0 also holds length 0.
  std::vector<std::uint64_t> log2_histogram;
};

LengthStats length_stats(const IndexedDataset& ds);

}  // namespace borealis
