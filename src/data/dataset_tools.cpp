#include "data/dataset_tools.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>

#include "core/error.h"

namespace borealis {

std::uint64_t merge_datasets(const std::vector<std::filesystem::path>& inputs,
                             const std::filesystem::path& out) {
  if (inputs.empty()) throw Error("nothing to merge", "--input");
  std::vector<IndexedDataset> sets;
  sets.reserve(inputs.size());
  for (const auto& p : inputs) sets.emplace_back(p);
  const TokenType type = sets.front().token_type();
  for (const auto& s : sets) {
    if (s.token_type() != type) {
      throw Error(
          fmt::format("token type {} differs from {} of {}", token_type_name(s.token_type()),
                      token_type_name(type), sets.front().prefix().string()),
          s.prefix().string());
    }
  }
  IndexedDatasetWriter writer(out, type);
  std::vector<std::int64_t> doc_idx;
  std::int64_t base = 0;
  for (const auto& s : sets) {
    for (std::size_t k = 0; k + 1 < s.doc_idx_size(); ++k) doc_idx.push_back(base + s.doc_index(k));
    for (std::size_t i = 0; i < s.sequences(); ++i) writer.add_raw_document(s.raw(i));
    base += static_cast<std::int64_t>(s.sequences());
  }
  doc_idx.push_back(base);
  writer.commit(&doc_idx);
  return doc_idx.size() - 1;
}

LengthStats length_stats(const IndexedDataset& ds) {
  LengthStats st;
  st.sequences = ds.sequences();
  st.tokens = ds.tokens();
  std::vector<std::int32_t> sizes(ds.sequences());
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    sizes[i] = ds.size(i);
    const auto bucket = static_cast<std::size_t>(
        std::bit_width(static_cast<std::uint32_t>(std::max(1, sizes[i]))) - 1);
    if (st.log2_histogram.size() <= bucket) st.log2_histogram.resize(bucket + 1);
    ++st.log2_histogram[bucket];
  }
  if (sizes.empty()) return st;
  st.mean = static_cast<double>(st.tokens) / static_cast<double>(sizes.size());
  std::sort(sizes.begin(), sizes.end());
  for (const double p : {0.0, 1.0, 10.0, 50.0, 90.0, 99.0, 100.0}) {
    const auto rank =
        static_cast<std::size_t>(p / 100.0 * static_cast<double>(sizes.size() - 1) + 0.5);
    st.percentiles.emplace_back(p, sizes[rank]);
  }
  return st;
}

}  // namespace borealis
